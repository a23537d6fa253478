"""An adapter's owner changes it from its page in Chromium against `lorastack serve`: yank a
version with a reason and see it marked; another user sees no such controls."""
from __future__ import annotations

import pytest

from tests.e2e.web.browser import UNLABELLED_CONTROLS_JS, screenshot

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")
def owned(hub_server, lora_dir):
    """olive/tuned 1.0 and 1.1 (public) and olive/quiet 1.0 (private), both users with a
    password: olive owns them, pat does not."""
    for name in ("olive", "pat"):
        output = hub_server.lorastack("users", "create", name, "--password",
                                      input=f"{PASSWORD}\n{PASSWORD}\n").stdout
        hub_server.tokens[name] = output.strip().splitlines()[-1]
    for version in ("1.0", "1.1"):
        hub_server.publish("olive", "olive/tuned", version, lora_dir)
    hub_server.publish("olive", "olive/quiet", "1.0", lora_dir,
                       metadata={"visibility": "private"})


def sign_in(page, base: str, name: str, next_url: str) -> None:
    page.goto(f"{base}/signin?next={next_url}")
    page.fill("#name", name)
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(f"{base}{next_url}")


def test_the_owner_yanks_a_version_from_its_page_and_sees_it_marked(browser_page, hub_server,
                                                                    owned):
    page = browser_page
    sign_in(page, hub_server.url, "olive", "/olive/tuned/v/1.1")
    assert page.evaluate(UNLABELLED_CONTROLS_JS) == []
    page.fill("#yank-reason", "NaNs on fp16")
    page.click("#yank-button")
    page.wait_for_selector("text=Yanked 1.1")
    screenshot(page, "owner-yanked")
    assert "NaNs on fp16" in page.locator("p.notice[role=note]").inner_text()
    current = page.locator(".versions li.current")
    assert "yanked" in current.inner_text() and "NaNs on fp16" in current.inner_text()
    api = hub_server.api("GET", "/api/v1/adapters/olive/tuned/versions/latest")
    assert api.json()["version"] == "1.0"

    page.click("#unyank-button")
    page.wait_for_selector("text=1.1 is no longer yanked")
    assert page.locator(".versions li.current .badge-no").count() == 0
    assert hub_server.api("GET", "/api/v1/adapters/olive/tuned/versions/latest"
                          ).json()["version"] == "1.1"


def test_another_user_sees_no_owner_controls(browser_page, hub_server, owned):
    page = browser_page
    sign_in(page, hub_server.url, "pat", "/olive/tuned")
    assert page.locator("#manage-h").count() == 0
    assert page.locator("form[action*='/yank'], form[action*='/edit']").count() == 0
    response = page.goto(f"{hub_server.url}/olive/quiet")
    assert response.status == 404  # private: not there at all for pat


def test_the_owner_downloads_a_private_file_from_the_page(browser_page, hub_server, owned,
                                                          lora_dir, download_dir):
    page = browser_page
    sign_in(page, hub_server.url, "olive", "/olive/quiet")
    with page.expect_download() as download_info:
        page.click("a[download='adapter_model.safetensors']")
    saved = download_dir / "adapter_model.safetensors"
    download_info.value.save_as(saved)
    assert saved.read_bytes() == (lora_dir / "adapter_model.safetensors").read_bytes()
