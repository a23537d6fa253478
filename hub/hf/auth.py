"""The caller of a Hugging Face protocol request: `Authorization: Bearer <token>`, which is
what `HF_TOKEN` makes the client send; a lorastack token of any scope."""
from __future__ import annotations

from hub import caller
from hub.services.accounts import Principal


def current_principal() -> Principal | None:
    """The caller, or None when anonymous; a bad token is 401, never anonymous."""
    return caller.current_principal(how="HF_TOKEN=<lorastack token>")
