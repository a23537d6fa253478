"""The write side of the Hugging Face protocol."""
from __future__ import annotations
