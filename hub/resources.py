"""Where the hub's non-code folders are: migrations/ and static/.

The source tree keeps them at the top level, beside hub/; a wheel carries them inside the
package (pyproject's package-dir maps them to hub/migrations and hub/static). Looking in the
package first serves an installed hub; the tree's own folders serve a checkout.
"""
from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _folder(name: str) -> Path:
    inside = _PACKAGE / name
    return inside if inside.is_dir() else _PACKAGE.parent / name


MIGRATIONS_DIR = _folder("migrations")
STATIC_DIR = _folder("static")
