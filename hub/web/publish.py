"""The publish page: an adapter folder's files and its details, through the publish service.

The form posts multipart to /new (the API's rules, through hub.services.publish); the
page's script sends the same form with XMLHttpRequest to show the transfer's progress, and
gets the errors back as problem+json with the field each one concerns. Without scripts the
page posts normally and comes back with the errors beside their fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import quote

from flask import current_app, g, jsonify, redirect, render_template, request
from werkzeug.exceptions import RequestEntityTooLarge

from hub.errors import FileTooLarge, HubError, InvalidRequest, InvalidVersion, MissingFile
from hub.formats.names import ALLOWED_FILES, REQUIRED_FILES, check_file_name
from hub.licenses import OTHER, get_license, list_licenses, validate_license_fields
from hub.runtime import current_hub
from hub.services.accounts import web_principal
from hub.services.names import (check_adapter_name, check_version_label, parse_metadata,
                                split_tags)
from hub.services.publish import LicenseChoice, Upload, publish_version
from hub.web import bp
from hub.web.account import sign_in_redirect
from hub.web.errors import web_safe

#: Which field of the form an error of the publish service concerns, by its code; an
#: error whose field is not known is shown above the form.
FIELD_OF_CODE = {
    "invalid_name": "name",
    "invalid_version": "version",
    "version_exists": "version",
    "unknown_license": "license",
    "invalid_adapter_config": "files",
    "invalid_safetensors": "files",
    "tensor_mismatch": "files",
    "non_finite_weights": "files",
    "unsupported_format": "files",
    "missing_file": "files",
    "unexpected_file": "files",
    "file_too_large": "files",
}
FORM = "form"  # the key of an error about the form as a whole


@dataclass
class PublishForm:
    """What the publisher typed (to show again with the errors) and the files they sent."""

    name: str = ""
    version: str = ""
    license: str = ""
    license_name: str = ""
    license_link: str = ""
    description: str = ""
    tags: str = ""
    visibility: str = "public"
    uploads: list[Upload] = field(default_factory=list)

    @classmethod
    def from_request(cls) -> "PublishForm":
        """The posted fields; the files are already on disk, hashed (hub.api.uploads)."""
        form = request.form
        values = {key: form.get(key, "") for key in
                  ("name", "version", "license", "license_name", "license_link",
                   "description", "tags", "visibility")}
        values = {key: value if key == "description" else value.strip()
                  for key, value in values.items()}
        uploads = []
        for part in request.files.getlist("files"):
            if not part.filename:
                continue  # the file input, sent empty
            stream = part.stream
            stream.flush()
            uploads.append(Upload(name=part.filename, path=stream.name, size=stream.size,
                                  sha256=stream.hexdigest()))
        return cls(**values, uploads=uploads)

    def tag_list(self) -> list[str]:
        """The tags typed as 'a, b c'."""
        return split_tags(self.tags)

    def license_choice(self) -> LicenseChoice:
        """The licence fields; the name and link only with `other` (they stay in the form,
        hidden, when another licence is chosen after typing them)."""
        if self.license != OTHER:
            return LicenseChoice(self.license or None)
        return LicenseChoice(OTHER, self.license_name or None, self.license_link or None)


@bp.route("/new", methods=["GET", "POST"])
def publish():
    """The publish form, and its upload."""
    if g.web_user is None:
        return sign_in_redirect("/new")
    if request.method == "GET":
        return _page(PublishForm(), {})
    form = PublishForm.from_request()
    errors = check_fields(form)
    if errors:
        return _refused(form, errors)
    hub = current_hub()
    principal = web_principal(g.web_user)
    try:
        with hub.db.session() as session:
            result = publish_version(session, hub.store, principal, principal.name, form.name,
                                     form.version, form.uploads, form.license_choice(),
                                     parse_metadata(_metadata(form)))
            adapter_id = f"{result.adapter.owner.name}/{result.adapter.name}"
            label, size = result.version.label, result.version.size_bytes
    except HubError as error:
        error = web_safe(error)
        where = FIELD_OF_CODE.get(error.code, FORM)
        if where == "files" and not error.detail.startswith(error.title):
            # The file checks speak of the bytes ("header length is 0"): say which check.
            error.detail = f"{error.title}: {error.detail}"
        return _refused(form, {where: error})
    if result.created:
        metrics = current_app.extensions["lorastack_metrics"]
        metrics.uploads.inc()
        metrics.upload_bytes.inc(size)
    url = f"/{quote(adapter_id)}/v/{quote(label, safe='')}"
    if _wants_json():
        return jsonify({"adapter": adapter_id, "version": label, "url": url,
                        "created": result.created}), (201 if result.created else 200)
    return redirect(url, code=303)


def check_fields(form: PublishForm) -> dict[str, HubError]:
    """Every typed field checked by the services' rules, so that all their errors show at
    once, each beside its field; the publish service checks them again."""
    errors: dict[str, HubError] = {}

    def check(name: str, rule, *args) -> None:
        try:
            rule(*args)
        except HubError as error:
            errors.setdefault(name, error)

    check("name", check_adapter_name, form.name)
    if not form.version:
        errors["version"] = InvalidVersion("A version label is required (for example 1.0.0).")
    else:
        check("version", check_version_label, form.version)
    if form.license:
        check("license", get_license, form.license)
    if form.license == OTHER and "license" not in errors:
        # The same check, once per field, so each of its errors lands beside its own.
        check("license_name", validate_license_fields, OTHER, form.license_name or None,
              "https://example.org/licence")
        check("license_link", validate_license_fields, OTHER, "licence",
              form.license_link or None)
    for key, value in (("description", form.description), ("tags", form.tag_list()),
                       ("visibility", form.visibility)):
        check(key, parse_metadata, {key: value})
    if not form.uploads:
        errors["files"] = MissingFile("Choose the adapter's files: adapter_config.json and"
                                      " adapter_model.safetensors (and README.md if it has"
                                      " one).")
    for upload in form.uploads:
        check("files", check_file_name, upload.name)
    return errors


def _metadata(form: PublishForm) -> dict:
    return {"description": form.description or None, "tags": form.tag_list() or None,
            "visibility": form.visibility or None}


@bp.errorhandler(RequestEntityTooLarge)
def _too_large(_error):
    """An upload over LORASTACK_MAX_UPLOAD_BYTES: werkzeug stops reading it, so the form
    comes back empty, with the limit beside the files."""
    limit = request.max_content_length
    if request.endpoint == "web.publish" and g.get("web_user") is None:
        return sign_in_redirect("/new")
    if request.endpoint != "web.publish":
        return current_app.handle_user_exception(InvalidRequest(
            f"The form is larger than this hub accepts here ({limit} bytes).", status=413))
    return _refused(PublishForm(), {"files": FileTooLarge(
        f"The upload is larger than this hub accepts ({limit} bytes;"
        " LORASTACK_MAX_UPLOAD_BYTES).")})


def _refused(form: PublishForm, errors: dict[str, HubError]):
    """The form again with its errors (a page), or problem+json for the page's script: the
    first error, and under `errors` each field's message."""
    first = next(iter(errors.values()))
    messages = {name: error.detail for name, error in errors.items()}
    if _wants_json():
        response = jsonify({**first.to_problem(), "errors": messages})
        response.status_code = first.status
        response.mimetype = "application/problem+json"
        return response
    return _page(form, messages), first.status


def _page(form: PublishForm, errors: dict[str, str]):
    return render_template("publish/new.html", form=form, errors=errors,
                           licenses=list_licenses(), other=OTHER,
                           allowed_files=sorted(ALLOWED_FILES),
                           required_files=REQUIRED_FILES,
                           optional_files=sorted(ALLOWED_FILES - set(REQUIRED_FILES)),
                           max_upload_bytes=current_hub().settings.max_upload_bytes)


def _wants_json() -> bool:
    best = request.accept_mimetypes.best_match(["text/html", "application/json"])
    return best == "application/json"
