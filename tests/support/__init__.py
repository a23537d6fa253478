"""Shared test helpers and pytest fixture plugins (see tests/conftest.py)."""
