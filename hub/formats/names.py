"""Which file names an upload may carry, and refusing pickle under any name."""
from __future__ import annotations

import os
import unicodedata
import zipfile

from hub.errors import UnexpectedFile, UnsupportedFormat
from hub.formats.safetensors_file import quote

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
README_FILE = "README.md"
ALLOWED_FILES = frozenset({CONFIG_FILE, WEIGHTS_FILE, README_FILE})
REQUIRED_FILES = (CONFIG_FILE, WEIGHTS_FILE)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

CONVERT_HINT = (
    "Pickle files can run code when loaded, so only safetensors is accepted. Convert with "
    "`model.save_pretrained(dir, safe_serialization=True)` (PEFT writes "
    "adapter_model.safetensors), or for a state dict: "
    "`from safetensors.torch import save_file; "
    "save_file(torch.load('adapter_model.bin', weights_only=True), 'adapter_model.safetensors')`."
)


def check_file_name(name: str) -> None:
    """Refuse a file name that is not one of the known adapter files."""
    if not isinstance(name, str) or not name:
        raise UnexpectedFile("empty file name")
    if any(unicodedata.category(c)[0] == "C" or c in "\u2028\u2029" for c in name):
        raise UnexpectedFile(f"file name {quote(name)} contains control characters")
    if "/" in name or "\\" in name or ".." in name or name.startswith("."):
        raise UnexpectedFile(f"file name {quote(name)} must be a plain name, not a path")
    if name.lower().endswith(PICKLE_SUFFIXES):
        raise UnsupportedFormat(f"{name}: pickle files are not accepted. {CONVERT_HINT}")
    if name not in ALLOWED_FILES:
        # kohya-ss and diffusers ship a LoRA as one freely named .safetensors file.
        note = (f"; PEFT names its weights {WEIGHTS_FILE}, next to {CONFIG_FILE}. A single "
                "freely named .safetensors is usually a kohya-ss / diffusers LoRA, which must "
                "be converted to PEFT's format first") if name.lower().endswith(".safetensors") else ""
        raise UnexpectedFile(
            f"unexpected file {quote(name)}; allowed: {', '.join(sorted(ALLOWED_FILES))}{note}")


def _looks_like_pickle(head: bytes) -> bool:
    # Protocol 2+ pickles open with PROTO (0x80) and the protocol number. A safetensors
    # header length can start with the same two bytes, but its JSON then begins with '{'
    # at byte 8, which is no pickle's opcode stream at that position in practice.
    return (len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5
            and not (len(head) > 8 and head[8:9] == b"{"))


def _zip_holds_pickle(path: str | os.PathLike[str]) -> bool:
    # torch.save writes a zip archive whose "<name>/data.pkl" is the pickle.
    try:
        with zipfile.ZipFile(path) as zf:
            return any(n.rsplit("/", 1)[-1].endswith(".pkl") for n in zf.namelist())
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


def reject_pickle(name: str, path: str | os.PathLike[str]) -> None:
    """Raise UnsupportedFormat if the file holds pickle bytes or a torch.save zip."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if _looks_like_pickle(head) or (head.startswith(b"PK\x03\x04") and _zip_holds_pickle(path)):
        raise UnsupportedFormat(f"{name} holds pickle data (torch.save / pickle output). "
                                f"{CONVERT_HINT}")
