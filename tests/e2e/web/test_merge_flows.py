"""Building a merge in Chromium against a running `lorastack serve`: from an adapter's
"Add to merge", a second source found by search, the plan as it changes, the live progress,
the archive PEFT loads, and publishing the merge as an adapter with its parents."""
from __future__ import annotations

import json
import re
import warnings
import zipfile
from urllib.parse import quote

import pytest

from tests.e2e.web.browser import UNLABELLED_CONTROLS_JS, screenshot, start_hub

pytestmark = pytest.mark.slow

PASSWORD = "correct horse battery"
#: A wider tiny LLaMA, every projection adapted at rank 64: merging two takes seconds.
SLOW_MODEL = dict(hidden_size=768, intermediate_size=1536, num_hidden_layers=4)
SLOW_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def hub_server(tmp_path_factory):
    """`lorastack serve` whose merges write their progress every half second (the default,
    5 s, is longer than a merge of these tiny adapters takes)."""
    server = start_hub(tmp_path_factory.mktemp("hub") / "var", LORASTACK_HEARTBEAT_SECONDS="0.5")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def sources(hub_server, lora_dir, other_lora_dir):
    """dana/style (apache-2.0) and dana/voice (mit) for the same base model, dana with a
    password; a private adapter of erin's that dana must never be offered."""
    hub_server.create_user("dana")
    hub_server.lorastack("users", "set-password", "dana", input=f"{PASSWORD}\n{PASSWORD}\n")
    hub_server.create_user("erin")
    hub_server.publish("dana", "dana/style", "1.0", lora_dir)
    hub_server.publish("dana", "dana/voice", "2.0", other_lora_dir, license="mit")
    hub_server.publish("erin", "erin/stylish-secret", "1.0", lora_dir,
                       metadata={"visibility": "private"})
    return hub_server


def sign_in(page, url: str, next_url: str) -> None:
    page.goto(f"{url}/signin?next={quote(next_url)}")
    page.fill("#name", "dana")
    page.fill("#password", PASSWORD)
    page.press("#password", "Enter")
    page.wait_for_url(f"**{next_url}")


def test_build_watch_download_and_publish_a_merge(sources, browser_page, download_dir):
    import torch  # noqa: F401  (PEFT's loader)
    from peft import PeftModel
    from safetensors import safe_open

    from tests.support.tiny_models import tiny_llama

    url, page = sources.url, browser_page
    # Anonymous: the builder sends the visitor to sign in, and back.
    page.goto(f"{url}/merge")
    assert "/signin?next=" in page.url
    sign_in(page, url, "/dana/style")
    page.click("text=Add to merge")
    page.wait_for_url("**/merge?add=dana*")
    assert page.input_value("#source-0-adapter") == "dana/style"
    assert page.input_value("#source-0-version") == "1.0"
    page.wait_for_selector("#plan-license")
    assert page.inner_text("#plan-license").startswith("apache-2.0")

    # The second source, found by typing: erin's private adapter is never offered.
    page.fill("#source-1-adapter", "voice")
    page.wait_for_selector("#source-1-suggestions button.suggestion")
    offered = page.locator("#source-1-suggestions button.suggestion").evaluate_all(
        "els => els.map(e => e.dataset.adapter)")
    assert offered == ["dana/voice"]
    page.fill("#source-1-adapter", "styl")
    page.wait_for_selector("#source-1-suggestions button.suggestion[data-adapter='dana/style']")
    assert "erin/stylish-secret" not in page.inner_text("#source-1-suggestions")
    page.fill("#source-1-adapter", "voice")
    page.click("#source-1-suggestions button.suggestion[data-adapter='dana/voice']")
    assert page.input_value("#source-1-version") == "2.0"
    assert page.locator("#source-2-adapter").count() == 1  # a new blank row to add a third
    page.fill("#source-1-weight", "-0.3")
    page.fill("#source-0-weight", "0.7")
    # apache-2.0 + mit: the plan's licence changes to "other", and says why.
    from playwright.sync_api import expect

    expect(page.locator("#plan-license")).to_have_text(re.compile(r"^other"))
    assert "dana/voice@2.0 is under mit" in page.inner_text("#plan-reasons")
    # A method with a density shows the field; a bad one is refused beside it.
    assert not page.is_visible("#density")
    page.select_option("#method", "ties")
    assert page.is_visible("#density")
    page.fill("#density", "3")
    page.wait_for_selector("#density-error:not([hidden])")
    assert "density must be in (0, 1]" in page.inner_text("#density-error")
    page.select_option("#method", "linear")
    expect(page.locator("#plan-license")).to_have_text(re.compile(r"^other"))
    assert page.is_hidden("#density-error") and page.is_hidden("#density")
    assert page.evaluate(UNLABELLED_CONTROLS_JS) == []
    screenshot(page, "merge-builder")

    page.click("#merge-button")
    page.wait_for_url("**/merges/*")
    merge_id = page.url.rsplit("/", 1)[1]
    page.wait_for_selector("#download-archive", timeout=120_000)
    assert page.inner_text("#merge-status") == "succeeded"
    assert page.get_attribute("#merge-progress-bar", "value") == "100.0"
    assert page.evaluate(UNLABELLED_CONTROLS_JS) == []
    screenshot(page, "merge-done")

    with page.expect_download() as download_info:
        page.click("#download-archive")
    archive = download_dir / "merge.zip"
    download_info.value.save_as(archive)
    folder = download_dir / "merged"
    with zipfile.ZipFile(archive) as zipped:
        assert {"adapter_config.json", "adapter_model.safetensors"} <= set(zipped.namelist())
        zipped.extractall(folder)
    with safe_open(str(folder / "adapter_model.safetensors"), "pt") as tensors:
        keys = set(tensors.keys())
    assert keys and all(".lora_A.weight" in k or ".lora_B.weight" in k for k in keys)
    assert json.loads((folder / "adapter_config.json").read_text())["peft_type"] == "LORA"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(tiny_llama(0), str(folder))
    assert any("lora_A" in name for name, _ in model.named_parameters())

    # Publish: the derived licence combines two, so the form asks for the terms' link.
    page.fill("#publish-name", "style-voice")
    page.fill("#publish-version", "1.0.0")
    page.fill("#publish-license-link", "https://example.org/style-voice-terms")
    page.click("#publish-merge")
    page.wait_for_url("**/dana/style-voice/v/1.0.0")
    body = page.inner_text("main")
    assert "dana/style" in body and "dana/voice" in body  # "Merged from"
    screenshot(page, "merge-published")

    page.goto(f"{url}/merges")
    assert merge_id[:12] in page.inner_text("main")
    assert "dana/style-voice@1.0.0" in page.inner_text("main")
    screenshot(page, "merges-list")
    refused = [line for line in page.console_lines
               if "Content Security Policy" in line or line.startswith("pageerror")]
    assert refused == []


def test_the_builder_works_without_javascript(sources, nojs_page):
    url, page = sources.url, nojs_page
    sign_in(page, url, "/merge")
    page.fill("#source-0-adapter", "dana/style")
    page.click("#check-plan")
    assert page.inner_text("#plan-license").startswith("apache-2.0")
    page.fill("#source-1-adapter", "dana/voice")
    page.fill("#source-1-weight", "0.5")
    page.click("#check-plan")
    assert page.inner_text("#plan-license").startswith("other")
    page.fill("#rank", "100000")
    page.click("#check-plan")
    assert "LORASTACK_MAX_MERGE_RANK" in page.inner_text("#rank-error")
    page.fill("#rank", "4")
    page.click("#merge-button")
    page.wait_for_url("**/merges/*")
    screenshot(page, "merge-nojs")
    assert page.locator("#merge-status").count() == 1


def test_the_progress_bar_follows_a_running_merge(sources, browser_page, tmp_path):
    from tests.support.adapters import BASE_MODEL, save_peft_lora
    from tests.support.tiny_models import tiny_llama

    for seed in (1, 2):
        folder = save_peft_lora(tmp_path / f"big{seed}", tiny_llama(0, **SLOW_MODEL), seed=seed,
                                base_name=BASE_MODEL, r=64, lora_alpha=64,
                                target_modules=list(SLOW_MODULES))
        sources.publish("dana", f"dana/big{seed}", "1.0", folder)
    url, page = sources.url, browser_page
    polls = []
    page.on("request", lambda request: polls.append(request.url)
            if request.url.endswith("/status") else None)
    sign_in(page, url, "/merge?add=dana/big1@1.0&add=dana/big2@1.0")
    # TIES: dense per module, a progress step after each (linear merges batch by shape).
    page.select_option("#method", "ties")
    page.fill("#density", "0.5")
    page.fill("#rank", "16")
    page.click("#merge-button")
    page.wait_for_url("**/merges/*")
    assert page.inner_text("#merge-status") in ("queued", "running"), "it ended before the page"
    assert page.is_hidden("#refresh-hint")  # the script follows it: no need to refresh
    shown, statuses = set(), set()
    while not page.locator("#download-archive").count():
        try:
            shown.add(float(page.get_attribute("#merge-progress-bar", "value", timeout=1000)))
            statuses.add(page.inner_text("#merge-status", timeout=1000))
        except Exception:  # the page reloading at the end
            pass
        page.wait_for_timeout(100)
    screenshot(page, "merge-progress-done")
    assert page.inner_text("#merge-status") == "succeeded"
    # The page polled once a second while it ran; its bar and status followed the merge.
    assert len(polls) >= 2 and "running" in statuses, (polls, statuses)
    assert any(0 < value < 100 for value in shown), shown
