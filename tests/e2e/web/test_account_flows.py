"""Account and publish pages in a real Chromium against a real `lorastack serve`: sign in,
tokens, publishing through the form with its progress bar, the keyboard, labels, CSRF."""
from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest
import requests

from tests.conftest import need_service
from tests.support.moto_server import free_port

ROOT = Path(__file__).resolve().parents[3]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
PASSWORD = "correct horse battery"


class Hub:
    """A served hub: its URL and the environment its commands run with."""

    def __init__(self, url: str, env: dict) -> None:
        self.url = url
        self.env = env

    def cli(self, *args: str, input: str | None = None) -> str:
        """Run a server-side `lorastack` command on this hub's data; its output."""
        done = subprocess.run([sys.executable, "-m", "hub.cli", *args], env=self.env,
                              input=input, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> Iterator[Hub]:
    """`lorastack serve` (gunicorn) on a fresh data folder, this tree's code, and a user
    alice made with `lorastack users create alice --password`."""
    data = tmp_path_factory.mktemp("web") / "var"
    port = free_port()
    env = {**os.environ, "LORASTACK_DATA_DIR": str(data), "PORT": str(port),
           "PYTHONPATH": str(ROOT)}
    for key in ("LORASTACK_DATABASE_URL", "LORASTACK_STORAGE_URL", "LORASTACK_COOKIE_SECURE"):
        env.pop(key, None)
    log_path = data.parent / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hub.cli", "serve", "--port", str(port)],
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log_path.read_text()
            try:
                if requests.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.2)
        served = Hub(url, env)
        served.cli("users", "create", "alice", "--password", input=f"{PASSWORD}\n{PASSWORD}\n")
        yield served
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright."""
    if not Path(CHROMIUM).exists():
        need_service("Chromium (apt-get install chromium)", FileNotFoundError(CHROMIUM))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        need_service("Playwright (pip install playwright)", exc)
    with sync_playwright() as playwright:
        # --no-sandbox: the tests may run as root, where Chromium's sandbox refuses to start.
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield instance
        instance.close()


@pytest.fixture
def page(browser, hub):
    """A fresh browser context (no cookies) and page; console errors are collected."""
    context = browser.new_context(base_url=hub.url)
    opened = context.new_page()
    opened.console_errors = []

    def _console(message) -> None:
        # The browser asks for /favicon.ico by itself; the pages do not name one.
        if message.type == "error" and not message.location.get("url", "").endswith(
                "/favicon.ico"):
            opened.console_errors.append(f"{message.text} ({message.location.get('url')})")

    opened.on("console", _console)
    yield opened
    context.close()


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"account-{name}.png"), full_page=True)


def sign_in(page, next_url: str = "/settings/tokens") -> None:
    page.goto(f"/signin?next={next_url}")
    page.fill("#name", "alice")
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(f"**{next_url}")


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A real PEFT adapter folder, with a README and a stray file a folder often holds."""
    from tests.support.adapters import save_lora

    folder = save_lora(tmp_path_factory.mktemp("adapter"), seed=3, r=16,
                       target_modules=("q_proj", "k_proj", "v_proj", "o_proj"))
    (folder / "README.md").write_text("# A browser-published adapter\n")
    return folder


def test_sign_in_then_create_and_revoke_a_token(page, hub):
    page.goto("/signin")
    shot(page, "signin")
    page.fill("#name", "alice")
    page.fill("#password", "not the password")
    page.click("button.primary[type=submit]")  # the form's, not the header's search
    assert page.locator(".form-error").inner_text() == "Wrong name or password."
    sign_in(page)
    assert page.locator(".user-name").inner_text() == "alice"
    page.check("#scope-write")
    page.click("text=Create token")
    token = page.input_value("#new-token")
    shot(page, "token-created")
    whoami = requests.get(f"{hub.url}/api/v1/whoami",
                          headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert whoami.json()["scopes"] == ["read", "write"]
    page.reload()  # shown once: not on the page any more, listed by its prefix
    assert token not in page.content() and token[:12] in page.content()
    page.click(f"button[aria-label='Revoke {token[:12]}']")
    page.wait_for_selector("text=no longer works")
    shot(page, "token-revoked")
    assert requests.get(f"{hub.url}/api/v1/whoami", timeout=10,
                        headers={"Authorization": f"Bearer {token}"}).status_code == 401
    page.click("text=Sign out")
    page.goto("/settings/tokens")
    assert "/signin?next=" in page.url  # signed out


RECORD_PROGRESS = """() => {
  window.progressSeen = [];
  window.statusSeen = [];
  const bar = document.getElementById('upload-progress');
  const status = document.getElementById('upload-status');
  new MutationObserver(() => window.progressSeen.push(bar.value))
    .observe(bar, {attributes: true});
  new MutationObserver(() => window.statusSeen.push(status.textContent))
    .observe(status, {childList: true, characterData: true, subtree: true});
}"""


def test_publish_through_the_form_and_watch_the_progress_bar_reach_100(page, hub,
                                                                       adapter_dir):
    sign_in(page, "/new")
    assert page.is_hidden("#license-other")
    page.select_option("#license", "other")  # its name and link appear only with 'other'
    assert page.is_visible("#license_name") and page.is_visible("#license_link")
    page.select_option("#license", "cc-by-4.0")
    assert page.is_hidden("#license-other")
    page.set_input_files("#files", [str(path) for path in sorted(adapter_dir.iterdir())])
    assert page.locator("#chosen-files li").count() == 3
    page.fill("#name", "browser-made")
    page.fill("#version", "1.0.0")
    page.fill("#description", "Published from Chromium.")
    page.fill("#tags", "chat, browser")
    page.evaluate(RECORD_PROGRESS)
    shot(page, "publish-filled")
    # A slow link (about 2 s for the upload), so the bar moves through the transfer.
    cdp = page.context.new_cdp_session(page)
    cdp.send("Network.enable")
    cdp.send("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1,
        "uploadThroughput": sum(p.stat().st_size for p in adapter_dir.iterdir()) / 2})
    page.click("#publish-button")
    page.wait_for_selector("#upload[data-state=done]", timeout=60_000)
    shot(page, "publish-done")
    seen = page.evaluate("window.progressSeen")
    assert seen[-1] == 100 and seen == sorted(seen), seen
    statuses = page.evaluate("window.statusSeen")
    assert any(0 < value < 100 for value in seen), seen  # it moved, not jumped
    assert any(re.search(r"[\d.]+ KB of [\d.]+ KB sent · [\d.]+ KB/s · \d+ s left", text)
               for text in statuses), statuses
    assert page.locator("#upload-status a").get_attribute("href") == \
        "/alice/browser-made/v/1.0.0"
    version = requests.get(f"{hub.url}/api/v1/adapters/alice/browser-made/versions/1.0.0",
                           timeout=10).json()
    assert version["license"] == "cc-by-4.0"
    sent = {path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in adapter_dir.iterdir()}
    assert {f["path"]: f["sha256"] for f in version["files"]} == sent
    assert page.console_errors == []  # no script refused by the CSP, no error


DROP_FILES = """() => {
  const transfer = new DataTransfer();
  for (const [name, text] of [['adapter_config.json', '{}'], ['README.md', '# hi'],
                              ['training_args.bin', 'pickle']]) {
    transfer.items.add(new File([text], name));
  }
  const zone = document.getElementById('dropzone');
  zone.dispatchEvent(new DragEvent('drop', {dataTransfer: transfer, bubbles: true,
                                            cancelable: true}));
}"""


def test_a_folder_or_a_drop_keeps_the_adapter_files_and_names_the_others(page, adapter_dir,
                                                                         tmp_path):
    folder = tmp_path / "run-output"
    folder.mkdir()
    for path in adapter_dir.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "optimizer.pt").write_bytes(b"not sent")
    sign_in(page, "/new")
    page.set_input_files("#folder", str(folder))
    chosen = page.evaluate("Array.from(document.getElementById('files').files, f => f.name)")
    assert sorted(chosen) == sorted(path.name for path in adapter_dir.iterdir())
    assert "optimizer.pt" in page.inner_text("#chosen-files .skipped")
    page.evaluate(DROP_FILES)
    chosen = page.evaluate("Array.from(document.getElementById('files').files, f => f.name)")
    assert sorted(chosen) == ["README.md", "adapter_config.json"]
    assert "training_args.bin" in page.inner_text("#chosen-files .skipped")
    shot(page, "publish-dropped")


def test_a_refused_upload_shows_the_error_beside_the_files(page, adapter_dir, tmp_path):
    sign_in(page, "/new")
    broken = tmp_path / "adapter_model.safetensors"
    broken.write_bytes(b"\x00" * 64)
    page.set_input_files("#files", [str(adapter_dir / "adapter_config.json"), str(broken)])
    page.fill("#name", "broken")
    page.fill("#version", "1.0.0")
    page.select_option("#license", "mit")
    page.click("#publish-button")
    page.wait_for_selector("#upload[data-state=refused]")
    shot(page, "publish-refused")
    assert "Invalid safetensors file" in page.inner_text("#files-error")
    assert page.get_attribute("#files", "aria-invalid") == "true"
    assert page.evaluate("document.activeElement.id") == "files"


def test_the_publish_form_works_from_the_keyboard_alone(page, hub, adapter_dir):
    sign_in(page, "/new")
    page.set_input_files("#files", [str(adapter_dir / "adapter_config.json"),
                                    str(adapter_dir / "adapter_model.safetensors")])
    page.focus("body")
    order = []
    for _ in range(40):
        page.keyboard.press("Tab")
        focused = page.evaluate("document.activeElement.id"
                                " || document.activeElement.outerHTML.slice(0, 80)")
        if focused in order:
            break
        order.append(focused)
    wanted = ["files", "folder", "name", "version", "license", "description", "tags",
              "visibility-public", "publish-button"]
    assert [item for item in order if item in wanted] == wanted, order
    # Type into the fields with the keyboard only and submit with Enter.
    page.focus("#name")
    page.keyboard.type("keyboard-made")
    page.keyboard.press("Tab")
    page.keyboard.type("0.1.0")
    page.keyboard.press("Tab")
    page.keyboard.type("MIT License")  # a closed select picks the option typed
    assert page.input_value("#license") == "mit"
    page.keyboard.press("Tab")
    page.keyboard.type("Typed, never clicked.")
    page.keyboard.press("Tab")
    page.keyboard.type("keyboard")
    page.keyboard.press("Enter")
    page.wait_for_selector("#upload[data-state=done]", timeout=60_000)
    shot(page, "publish-keyboard")
    assert page.evaluate("document.activeElement.tagName") == "A"  # the result's link
    body = requests.get(f"{hub.url}/api/v1/adapters/alice/keyboard-made", timeout=10).json()
    assert body["tags"] == ["keyboard"] and body["license"] == "mit"


def test_without_javascript_the_form_posts_and_shows_errors_beside_fields(browser, hub,
                                                                          adapter_dir):
    context = browser.new_context(base_url=hub.url, java_script_enabled=False)
    page = context.new_page()
    try:
        sign_in(page, "/new")
        assert page.is_visible("#license_name")  # nothing hides the 'other' fields
        page.set_input_files("#files", [str(path) for path in sorted(adapter_dir.iterdir())])
        page.fill("#name", "no-script")
        page.fill("#version", "latest")
        page.select_option("#license", "other")
        page.fill("#license_name", "My licence")
        page.click("#publish-button")
        assert "reserved" in page.inner_text("#version-error")
        assert "license_link" in page.inner_text("#license_link-error")
        assert page.input_value("#name") == "no-script"  # what was typed comes back
        assert "2 fields" in page.inner_text("#error-summary")
        assert page.is_visible("#files-again")
        shot(page, "publish-no-script-errors")
        page.set_input_files("#files", [str(path) for path in sorted(adapter_dir.iterdir())])
        page.fill("#version", "1.0.0")
        page.fill("#license_link", "https://example.org/my-licence")
        with page.expect_response(lambda r: r.request.method == "POST") as answer:
            page.click("#publish-button")
        assert answer.value.status == 303
        assert answer.value.headers["location"] == "/alice/no-script/v/1.0.0"
    finally:
        context.close()
    version = requests.get(f"{hub.url}/api/v1/adapters/alice/no-script/versions/1.0.0",
                           timeout=10).json()
    assert version["license"] == "other"


EVERY_CONTROL_LABELLED = """() => Array.from(document.querySelectorAll(
    'input:not([type=hidden]), select, textarea, progress, button'))
  .filter((el) => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                  && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map((el) => el.outerHTML)"""


def test_every_form_control_has_a_label(page):
    page.goto("/signin")
    assert page.evaluate(EVERY_CONTROL_LABELLED) == []
    sign_in(page)
    page.check("#scope-read")
    page.click("text=Create token")
    assert page.evaluate(EVERY_CONTROL_LABELLED) == []
    page.goto("/new")
    page.select_option("#license", "other")
    assert page.evaluate(EVERY_CONTROL_LABELLED) == []
    shot(page, "publish-other-licence")


def test_a_form_post_without_the_csrf_token_is_refused(page, hub):
    sign_in(page)
    rows = page.locator("table.tokens tbody tr").count()
    page.evaluate("""() => document.querySelector(
        "form[action='/settings/tokens'] input[name=csrf_token]").remove()""")
    with page.expect_response(lambda r: r.url.endswith("/settings/tokens")
                              and r.request.method == "POST") as answer:
        page.click("text=Create token")
    assert answer.value.status == 403
    shot(page, "csrf-refused")
    page.goto("/settings/tokens")
    assert page.locator("table.tokens tbody tr").count() == rows  # nothing was created
