"""Reading the catalog in Chromium against a running `lorastack serve`: find, open,
download, the sanitized card, privacy, paging, labels, and all of it without JavaScript."""
from __future__ import annotations

import re
import shutil

import pytest

from tests.e2e.web.browser import UNLABELLED_CONTROLS_JS, screenshot, sha256_of

pytestmark = pytest.mark.slow

XSS_README = """---
license: mit
tags: [chat]
---
# Chatty

A helpful adapter.

<script>window.__pwned = "script"; alert("script")</script>
<img src="/static/missing.png" onerror="window.__pwned = 'onerror'; alert('onerror')">
<a href="javascript:alert('link')" id="evil-link">a link</a>
<svg><script>alert("svg")</script></svg>
<iframe src="javascript:alert('frame')"></iframe>
"""
MODEL = "adapter_model.safetensors"


@pytest.fixture(scope="module")
def catalog(hub_server, lora_dir, other_lora_dir, tmp_path_factory):
    """Published through the API: alice/chatty (mit, the XSS card), bob/coder
    (cc-by-nc-4.0, tag code), carol/secret (private) and five pager/p* adapters."""
    carded = tmp_path_factory.mktemp("carded") / "chatty"
    shutil.copytree(lora_dir, carded)
    (carded / "README.md").write_text(XSS_README)
    for name in ("alice", "bob", "carol", "pager"):
        hub_server.create_user(name)
    hub_server.publish("alice", "alice/chatty", "1.0", carded, license="mit",
                       metadata={"description": "Talks a lot", "task": "text-generation"})
    hub_server.publish("bob", "bob/coder", "0.3", other_lora_dir, license="cc-by-nc-4.0",
                       metadata={"tags": ["code"], "description": "Writes code"})
    hub_server.publish("carol", "carol/secret", "1.0", lora_dir,
                       metadata={"visibility": "private"})
    for index in range(5):
        hub_server.publish("pager", f"pager/p{index}", "1.0", lora_dir,
                           metadata={"tags": ["paging"]})
    return {"carded": carded}


def card_titles(page) -> list[str]:
    return [text.strip() for text in page.locator(".card h3 a").all_inner_texts()]


def assert_no_refusals(page) -> None:
    """The hub's own pages load nothing the Content-Security-Policy refuses."""
    refused = [line for line in page.console_lines
               if "Content Security Policy" in line or "Refused to" in line
               or line.startswith("pageerror")]
    assert refused == []


def test_find_an_adapter_by_search_then_open_it(hub_server, catalog, browser_page):
    page = browser_page
    page.goto(hub_server.url + "/")
    screenshot(page, "catalog")
    assert "alice/chatty" in card_titles(page) and "bob/coder" in card_titles(page)
    page.get_by_label("Search adapters").fill("talks")
    page.get_by_label("Search adapters").press("Enter")
    page.wait_for_url(re.compile(r"search=talks"))
    assert card_titles(page) == ["alice/chatty"]
    screenshot(page, "catalog-search")
    page.get_by_role("link", name="alice/chatty").click()
    page.wait_for_url(hub_server.url + "/alice/chatty")
    assert page.locator("h1").first.inner_text() == "alice/chatty"
    assert page.get_by_text("Commercial use is allowed.").is_visible()
    screenshot(page, "adapter")
    assert_no_refusals(page)


def test_find_an_adapter_by_filter_and_bookmark_the_result(hub_server, catalog,
                                                           browser_page):
    page = browser_page
    page.goto(hub_server.url + "/")
    page.get_by_label("Licence", exact=True).select_option("cc-by-nc-4.0")
    page.get_by_label("Sort by", exact=True).select_option("name")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"license=cc-by-nc-4\.0"))
    assert card_titles(page) == ["bob/coder"]
    assert page.locator(".card .badge", has_text="Non-commercial").count() == 1
    screenshot(page, "catalog-filter")
    bookmarked = page.url
    assert "search=" not in bookmarked  # empty fields are dropped from the URL
    page.goto(bookmarked)
    assert card_titles(page) == ["bob/coder"]
    page.get_by_role("link", name="code", exact=True).click()
    assert card_titles(page) == ["bob/coder"] and "tag=code" in page.url


def test_download_a_file_and_check_its_sha256(hub_server, catalog, browser_page,
                                              download_dir):
    page = browser_page
    page.goto(hub_server.url + "/alice/chatty")
    row = page.locator("table.files tr", has_text=MODEL)
    listed = row.locator("code.digest").inner_text().strip()
    with page.expect_download() as info:
        row.get_by_role("link", name=MODEL).click()
    saved = download_dir / MODEL
    info.value.save_as(saved)
    assert info.value.suggested_filename == MODEL
    assert sha256_of(saved) == listed == sha256_of(catalog["carded"] / MODEL)
    detail = hub_server.api("GET", "/api/v1/adapters/alice/chatty").json()
    assert detail["downloads"] >= 1  # counted by the API, the one place that counts


def test_a_readme_with_script_is_inert(hub_server, catalog, browser_page):
    page = browser_page
    dialogs = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(hub_server.url + "/alice/chatty")
    page.wait_for_load_state("load")
    card = page.locator(".model-card")
    assert card.locator("h1").inner_text() == "Chatty"
    assert card.locator("script, iframe, [onerror], [onclick]").count() == 0
    href = card.locator("#evil-link, a", has_text="a link").first.get_attribute("href")
    assert href is None or not href.startswith("javascript:")
    assert page.evaluate("window.__pwned") is None
    assert dialogs == []
    assert "license: mit" not in page.content()  # front matter is not shown raw
    screenshot(page, "adapter-xss-card")


def test_a_private_adapter_is_a_404_page_for_another_viewer(hub_server, catalog,
                                                            browser_page):
    page = browser_page
    response = page.goto(hub_server.url + "/carol/secret")
    assert response.status == 404
    assert page.get_by_role("heading", name="Page not found").is_visible()
    assert page.locator(".site-header").is_visible()  # the site's own layout
    screenshot(page, "error-404")
    page.goto(hub_server.url + "/carol")
    assert "carol/secret" not in card_titles(page)
    page.goto(hub_server.url + "/?search=secret")
    assert card_titles(page) == []
    assert_no_refusals(page)


def test_pagination_by_the_next_link_visits_every_adapter_once(hub_server, catalog,
                                                               browser_page):
    page = browser_page
    page.goto(hub_server.url + "/?tag=paging&sort=name&limit=2")
    seen, urls = [], []
    while True:
        seen += card_titles(page)
        urls.append(page.url)
        following = page.get_by_role("link", name="Next page")
        if following.count() == 0:
            break
        following.click()
        page.wait_for_load_state()
    screenshot(page, "catalog-last-page")
    assert seen == [f"pager/p{index}" for index in range(5)]
    assert len(urls) == 3
    page.goto(urls[1])  # a page URL is stable: the same cards when opened again
    assert card_titles(page) == ["pager/p2", "pager/p3"]
    page.get_by_role("link", name="First page").click()
    assert card_titles(page) == ["pager/p0", "pager/p1"]


def test_the_owner_page_lists_their_adapters(hub_server, catalog, browser_page):
    page = browser_page
    page.goto(hub_server.url + "/bob")
    assert page.locator("h1").inner_text() == "bob"
    assert card_titles(page) == ["bob/coder"]
    screenshot(page, "owner")


@pytest.mark.parametrize("path", ["/", "/?license=mit", "/alice/chatty",
                                  "/alice/chatty/v/1.0", "/bob", "/no/such/page/at/all"])
def test_every_form_control_has_a_label(hub_server, catalog, browser_page, path):
    page = browser_page
    page.goto(hub_server.url + path)
    assert page.evaluate(UNLABELLED_CONTROLS_JS) == []
    assert_no_refusals(page)


def test_copy_buttons_copy_the_snippet(hub_server, catalog, browser):
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        page = context.new_page()
        page.goto(hub_server.url + "/alice/chatty")
        buttons = page.get_by_role("button", name="Copy this snippet")
        assert buttons.count() == 2
        buttons.first.click()
        assert page.evaluate("navigator.clipboard.readText()") == \
            "lorastack pull alice/chatty@1.0 ./chatty"
    finally:
        context.close()


def test_reading_works_without_javascript(hub_server, catalog, nojs_page, download_dir):
    page = nojs_page
    page.goto(hub_server.url + "/")
    page.get_by_label("Licence", exact=True).select_option("mit")
    page.get_by_role("button", name="Apply").click()
    page.wait_for_url(re.compile(r"license=mit"))
    assert card_titles(page) == ["alice/chatty"]
    screenshot(page, "catalog-nojs")
    page.get_by_role("link", name="alice/chatty").click()
    page.wait_for_url(hub_server.url + "/alice/chatty")
    assert page.locator(".model-card h1").inner_text() == "Chatty"
    assert page.get_by_role("button", name="Copy this snippet").count() == 0
    assert "lorastack pull alice/chatty@1.0" in page.locator("pre.snippet").first.inner_text()
    screenshot(page, "adapter-nojs")
    row = page.locator("table.files tr", has_text="adapter_config.json")
    with page.expect_download() as info:
        row.get_by_role("link", name="adapter_config.json").click()
    info.value.save_as(download_dir / "adapter_config.json")
    assert sha256_of(download_dir / "adapter_config.json") == \
        row.locator("code.digest").inner_text().strip()


def test_a_yanked_version_is_marked_with_its_reason(hub_server, catalog, browser_page,
                                                    other_lora_dir):
    hub_server.publish("bob", "bob/coder", "0.4", other_lora_dir, license="cc-by-nc-4.0")
    yank = hub_server.api("POST", "/api/v1/adapters/bob/coder/versions/0.4/yank", owner="bob",
                          json={"reason": "trained on the wrong split"})
    assert yank.status_code == 200
    page = browser_page
    page.goto(hub_server.url + "/bob/coder")
    assert "version 0.3" in page.locator(".subtitle").inner_text()  # latest skips 0.4
    entry = page.locator(".versions li", has_text="0.4")
    assert "yanked" in entry.inner_text() and "trained on the wrong split" in entry.inner_text()
    entry.get_by_role("link", name="0.4").click()
    page.wait_for_url(hub_server.url + "/bob/coder/v/0.4")
    assert "This version was yanked: trained on the wrong split" in \
        page.get_by_role("note").inner_text()
    screenshot(page, "version-yanked")


@pytest.mark.parametrize("path", ["/", "/alice/chatty", "/bob", "/no/such/page/at/all"])
def test_pages_fit_a_phone_screen(hub_server, catalog, browser, path):
    context = browser.new_context(viewport={"width": 375, "height": 740}, is_mobile=True)
    try:
        page = context.new_page()
        page.goto(hub_server.url + path)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"{path} scrolls sideways by {overflow}px"
        screenshot(page, "phone" + path.replace("/", "-").rstrip("-"))
    finally:
        context.close()


def test_the_keyboard_reaches_the_content_and_the_catalog_first(hub_server, catalog,
                                                                browser_page):
    page = browser_page
    page.goto(hub_server.url + "/alice/chatty")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")
    page.keyboard.press("Tab")  # from the skip target, the first link of the content
    assert page.evaluate("document.activeElement.closest('main') !== null")
    merge = page.get_by_role("link", name="Add to merge")
    assert merge.get_attribute("href") == "/merge?add=alice%2Fchatty%401.0"
