"""lorastack: a registry and merge hub for LoRA adapters.

Importing this package does nothing; `create_app` builds the web application.
"""
from __future__ import annotations

__version__ = "0.1.0"


def create_app(settings=None):
    """Build the Flask application (see hub.app.build_app)."""
    from hub.app import build_app

    return build_app(settings)
