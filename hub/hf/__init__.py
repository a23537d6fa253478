"""The Hugging Face Hub protocol over lorastack's services: with `HF_ENDPOINT` set to the
hub, huggingface_hub, peft and transformers read and write adapters unchanged.

Mounted at the Hub's own paths (`/api/models/...`, `/api/whoami-v2`, `/api/repos/...`,
`/{owner}/{name}/resolve/...`); its errors carry the Hub's `X-Error-Code`. docs/hf.md
describes the surface.
"""
from __future__ import annotations

from flask import Blueprint, Flask, current_app, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as WerkzeugMethodNotAllowed

from hub.errors import FileTooLarge, HubError, InvalidRequest, MethodNotAllowed
from hub.hf.errors import render

hf = Blueprint("hf", __name__)


@hf.errorhandler(HubError)
def _hub_error(error: HubError):
    return render(error)


# Flask finds a handler by status code before it looks at classes: the app's handler of
# 413 would win over this blueprint's of HTTPException, hence both.
@hf.errorhandler(RequestEntityTooLarge)
@hf.errorhandler(HTTPException)
def _http_error(error: HTTPException):
    """werkzeug's refusals on the protocol's routes, in the Hub's error shape."""
    if error.code == 405:
        wrapped: HubError = MethodNotAllowed(error.description or error.name)
    elif error.code == 413:
        wrapped = FileTooLarge(f"The commit is larger than this hub accepts"
                               f" ({request.max_content_length} bytes;"
                               " LORASTACK_MAX_UPLOAD_BYTES).")
    else:
        wrapped = InvalidRequest(error.description or error.name, status=error.code or 400)
    response = render(wrapped)
    for key, value in error.get_headers():
        if key.lower() != "content-type":  # Allow (405)
            response.headers[key] = value
    return response


@hf.before_app_request
def _method_not_allowed():
    """A method a protocol route does not take fails in routing, before any blueprint
    is chosen: answer it here when the path is one of the protocol's."""
    error = request.routing_exception
    if not isinstance(error, WerkzeugMethodNotAllowed) or not error.valid_methods:
        return None
    urls = current_app.url_map.bind_to_environ(request.environ)
    try:
        rule, _ = urls.match(method=sorted(error.valid_methods)[0], return_rule=True)
    except HTTPException:
        return None
    return _http_error(error) if rule.endpoint.startswith(f"{hf.name}.") else None


def register(app: Flask) -> None:
    """Mount the protocol's routes on `app`, with the Hub's error rendering."""
    from hub.hf import read, write  # noqa: F401  (their routes register on `hf`)

    app.register_blueprint(hf)
