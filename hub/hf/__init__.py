"""The Hugging Face Hub protocol over lorastack's services: with `HF_ENDPOINT` set to the
hub, huggingface_hub, peft and transformers read and write adapters unchanged.

Mounted at the Hub's own paths (`/api/models/...`, `/api/whoami-v2`, `/api/repos/...`,
`/{owner}/{name}/resolve/...`); its errors carry the Hub's `X-Error-Code`. docs/hf.md
describes the surface.
"""
from __future__ import annotations

from flask import Blueprint, Flask

from hub.errors import HubError
from hub.hf.errors import render

hf = Blueprint("hf", __name__)


@hf.errorhandler(HubError)
def _hub_error(error: HubError):
    return render(error)


def register(app: Flask) -> None:
    """Mount the protocol's routes on `app`, with the Hub's error rendering."""
    from hub.hf import read, write  # noqa: F401  (their routes register on `hf`)

    app.register_blueprint(hf)
