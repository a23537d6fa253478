"""Fixtures for the page tests: a running hub (`hub_server`) and Chromium pages.

`hub_server` is one `lorastack serve` per test module (SQLite, local store): tests of a
module share it, so each names its own users and adapters. `browser_page` is a fresh
browser context per test (no cookies carried over), `nojs_page` the same with JavaScript
turned off. Both record the console, so a test can assert that the Content-Security-Policy
refused nothing of the hub's own.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

from tests.conftest import need_service
from tests.e2e.web.browser import CHROMIUM, HubServer, start_hub


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory) -> Iterator[HubServer]:
    """A real `lorastack serve` on a fresh data folder, for one test module."""
    server = start_hub(tmp_path_factory.mktemp("hub") / "var")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def browser():
    """Debian's Chromium, headless, through Playwright."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        need_service("Playwright (pip install playwright)", exc)
    if not CHROMIUM.exists():
        need_service("Chromium", FileNotFoundError(f"{CHROMIUM}: apt-get install chromium"))
    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root in a container, where Chromium's sandbox
        # cannot start.
        instance = playwright.chromium.launch(executable_path=str(CHROMIUM),
                                              args=["--no-sandbox"])
        yield instance
        instance.close()


def _page(browser, **options):
    context = browser.new_context(accept_downloads=True, **options)
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.console_lines = []  # what the browser logged: CSP refusals, script errors
    page.on("console", lambda message: page.console_lines.append(message.text))
    page.on("pageerror", lambda error: page.console_lines.append(f"pageerror: {error}"))
    return context, page


@pytest.fixture
def browser_page(browser):
    """A page in a fresh context (its own cookies, downloads accepted)."""
    context, page = _page(browser)
    yield page
    context.close()


@pytest.fixture
def nojs_page(browser):
    """A page whose context runs no JavaScript at all."""
    context, page = _page(browser, java_script_enabled=False)
    yield page
    context.close()


@pytest.fixture
def download_dir(tmp_path) -> Path:
    """Where a test saves what the browser downloaded."""
    path = tmp_path / "downloads"
    path.mkdir()
    return path
