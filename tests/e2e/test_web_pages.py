"""The read-side pages through Flask's client, on both backends: catalog, adapter, version,
owner and error pages, rendered from the same services as the API."""
from __future__ import annotations

import hashlib
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from hub.app import CONTENT_SECURITY_POLICY
from hub.cli import main
from hub.models import Version, VersionFile, VersionParent
from tests.e2e.helpers import auth, publish

XSS_README = """---
license: mit
tags: [chat, xss-probe]
secret_front_matter_field: do-not-show
---
# A card

Some *emphasis* and a table:

| rank | alpha |
|------|-------|
| 4    | 8     |

<script>window.__pwned = 1</script>
<img src="x" onerror="window.__pwned = 2">
<a href="javascript:alert(1)">click</a>
<p onclick="alert(1)">para</p>
"""


def html(response) -> str:
    assert response.mimetype == "text/html", response.mimetype
    return response.get_data(as_text=True)


def copy_with_readme(source: Path, target: Path, readme: str) -> Path:
    shutil.copytree(source, target)
    (target / "README.md").write_text(readme)
    return target


@pytest.fixture
def two_adapters(client, make_user, lora_dir, other_lora_dir, tmp_path):
    """alice/chatty (mit, r=4, README with an XSS attempt), bob/noncom (cc-by-nc-4.0, r=8)."""
    alice, bob = make_user("alice"), make_user("bob")
    carded = copy_with_readme(lora_dir, tmp_path / "carded", XSS_README)
    assert publish(client, alice, "alice/chatty", "1.0", carded, license="mit",
                   metadata={"description": "Talks a lot", "tags": ["chat"],
                             "task": "text-generation"}).status_code == 201
    assert publish(client, bob, "bob/noncom", "2.0", other_lora_dir, license="cc-by-nc-4.0",
                   metadata={"tags": ["code"], "task": "summarization"}).status_code == 201
    return alice, bob


def card_names(page: str) -> list[str]:
    return re.findall(r'<span class="owner">([^<]+)</span>([^<]+)</a>', page)


def test_catalog_shows_cards_with_rank_licence_badges_and_downloads(client, two_adapters):
    page = html(client.get("/"))
    assert sorted(card_names(page)) == [("alice/", "chatty"), ("bob/", "noncom")]
    assert "<dt>Rank</dt><dd>4</dd>" in page and "<dt>Rank</dt><dd>8</dd>" in page
    assert "Commercial use" in page and "Non-commercial" in page and "Attribution" in page
    assert "tiny-llama-64" in page and "Talks a lot" in page


@pytest.mark.parametrize("query, expected", [
    ("search=talks", ["chatty"]), ("search=noncom", ["noncom"]),
    ("license=cc-by-nc-4.0", ["noncom"]), ("license=MIT", ["chatty"]),
    ("tag=code", ["noncom"]), ("task=text-generation", ["chatty"]),
    ("base_model=tiny-llama-64", ["chatty", "noncom"]), ("search=nothing-like-it", []),
])
def test_catalog_filters_by_search_licence_tag_task_and_base_model(client, two_adapters,
                                                                   query, expected):
    page = html(client.get(f"/?{query}"))
    assert sorted(name for _, name in card_names(page)) == expected


def test_a_search_lists_by_relevance_as_the_api_does(client, make_user, lora_dir):
    token = make_user("erin")
    # "orca" in one adapter's name, in another's description only; that one is downloaded.
    assert publish(client, token, "erin/orca-chat", "1", lora_dir).status_code == 201
    assert publish(client, token, "erin/helper", "1", lora_dir,
                   metadata={"description": "Tuned on orca data"}).status_code == 201
    client.get("/api/v1/adapters/erin/helper/versions/1/files/adapter_model.safetensors",
               headers=auth(token))
    page = html(client.get("/?search=orca"))
    assert card_names(page) == [("erin/", "orca-chat"), ("erin/", "helper")]
    assert '<option value="relevance" selected>Best match</option>' in page
    api = client.get("/api/v1/adapters?search=orca").get_json()["items"]
    assert [item["id"] for item in api] == ["erin/orca-chat", "erin/helper"]
    assert card_names(html(client.get("/?search=orca&sort=downloads")))[0] == ("erin/", "helper")


def test_filter_controls_offer_the_catalogs_values_and_keep_the_choice(client, two_adapters):
    page = html(client.get("/?tag=code&sort=name"))
    assert '<option value="tiny-llama-64">' in page
    assert '<option value="chat">' in page and '<option value="summarization">' in page
    assert 'name="tag" list="tags" value="code"' in page
    assert '<option value="name" selected>' in page


def test_a_submitted_form_redirects_to_a_clean_bookmarkable_url(client, two_adapters):
    response = client.get("/?search=&base_model=&license=mit&tag=&task=&sort=downloads&x=1")
    assert response.status_code == 302
    assert response.headers["Location"] == "/?license=mit&sort=downloads"


def test_the_next_link_pages_through_every_adapter_once(client, make_user, lora_dir):
    token = make_user("alice")
    for index in range(5):
        assert publish(client, token, f"alice/a{index}", "1.0", lora_dir).status_code == 201
    seen, url = [], "/?sort=name&limit=2"
    while url:
        page = html(client.get(url))
        seen += [name for _, name in card_names(page)]
        found = re.search(r'<a href="([^"]+)" rel="next"', page)
        url = found.group(1).replace("&amp;", "&") if found else None
        if url:
            assert "sort=name" in url and "limit=2" in url and "cursor=" in url
    assert seen == ["a0", "a1", "a2", "a3", "a4"]


def test_a_bad_cursor_or_licence_is_a_400_page_not_a_500(client, two_adapters):
    for url in ("/?cursor=garbage", "/?license=not-a-licence", "/?limit=1000"):
        response = client.get(url)
        assert response.status_code == 400, url
        assert 'class="error-page"' in html(response)


def test_adapter_page_renders_the_card_sanitized_without_front_matter(client, two_adapters):
    page = html(client.get("/alice/chatty"))
    card = page.split('class="model-card"', 1)[1].split("</article>", 1)[0]
    assert "<h1>A card</h1>" in card and "<em>emphasis</em>" in card and "<table>" in card
    assert "<script" not in card and "onerror" not in card and "onclick" not in card
    assert "javascript:" not in card and "__pwned" not in card
    assert "secret_front_matter_field" not in page and "license: mit" not in page


def test_adapter_page_lists_files_with_sha256_and_the_apis_download_urls(client, two_adapters,
                                                                         lora_dir):
    page = html(client.get("/alice/chatty"))
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert f'href="/api/v1/adapters/alice/chatty/versions/1.0/files/{name}"' in page
    digest = hashlib.sha256((lora_dir / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert digest in page
    for fact in ("<dt>Rank (r)</dt><dd>4</dd>", "<dt>Alpha</dt><dd>8.0</dd>",
                 "q_proj, v_proj", "<dt>Parameters</dt>"):
        assert fact in page, fact
    assert "lorastack pull alice/chatty@1.0 ./chatty" in page
    assert 'PeftModel.from_pretrained(base, "./chatty")' in page
    assert 'href="/merge?add=alice%2Fchatty%401.0"' in page
    assert "Commercial use is allowed." in page


def test_downloads_from_the_page_are_counted_once_by_the_api(settings, client, two_adapters):
    url = "/api/v1/adapters/alice/chatty/versions/1.0/files/adapter_model.safetensors"
    assert url in html(client.get("/alice/chatty"))
    assert client.get(url).status_code in (200, 302)
    assert "· 1 download\n" in html(client.get("/alice/chatty"))


def test_an_unreadable_card_leaves_the_rest_of_the_page(app, client, make_user, lora_dir,
                                                        tmp_path):
    token = make_user("frank")
    # A README no other test renders: cards are cached by their digest.
    readme = f"# Card {tmp_path.name}\n"
    publish(client, token, "frank/lost", "1.0", lora_dir, files={"README.md": readme.encode()})
    hub = app.extensions["lorastack"]
    with hub.db.session() as session:
        key = session.scalar(select(VersionFile.blob_key).where(VersionFile.path == "README.md"))
    hub.store.delete(key)
    response = client.get("/frank/lost")
    page = html(response)
    assert response.status_code == 200 and "The model card cannot be read right now" in page
    assert "/api/v1/adapters/frank/lost/versions/1.0/files/adapter_model.safetensors" in page


def test_version_page_marks_a_yanked_version_with_its_reason(client, two_adapters, lora_dir,
                                                             other_lora_dir):
    alice, _ = two_adapters
    assert publish(client, alice, "alice/chatty", "1.1", other_lora_dir,
                   license="mit").status_code == 201
    yank = client.post("/api/v1/adapters/alice/chatty/versions/1.1/yank",
                       json={"reason": "wrong base weights"}, headers=auth(alice))
    assert yank.status_code == 200
    latest = html(client.get("/alice/chatty"))
    assert "version <strong>1.0</strong>" in latest  # latest skips the yanked one
    assert "wrong base weights" in latest and "yanked" in latest
    yanked = html(client.get("/alice/chatty/v/1.1"))
    assert "This version was yanked: wrong base weights" in yanked
    assert "/api/v1/adapters/alice/chatty/versions/1.1/files/adapter_model.safetensors" in yanked
    assert client.get("/alice/chatty/v/9.9").status_code == 404


def test_a_private_adapter_is_a_404_page_for_everyone_but_its_owner(client, make_user, sign_in,
                                                                    lora_dir):
    token = make_user("carol")
    make_user("dave")
    assert publish(client, token, "carol/secret", "1.0", lora_dir,
                   metadata={"visibility": "private", "tags": ["hush-tag"]}).status_code == 201
    request_id = re.compile(r"request <code>[0-9a-f]+</code>")
    for url in ("/carol/secret", "/carol/secret/v/1.0"):
        anonymous = client.get(url)
        assert anonymous.status_code == 404 and 'class="error-page"' in html(anonymous)
        # Word for word the page of an adapter that does not exist.
        absent = client.get(url.replace("secret", "absent"))
        assert absent.status_code == 404
        assert (request_id.sub("", html(anonymous)).replace("secret", "absent")
                == request_id.sub("", html(absent)))
    assert "secret" not in html(client.get("/")) and "secret" not in html(client.get("/carol"))
    assert "hush-tag" not in html(client.get("/"))  # nor among the filters' suggestions
    sign_in("dave")
    assert client.get("/carol/secret").status_code == 404
    assert "secret" not in html(client.get("/carol"))
    sign_in("carol")
    own = client.get("/carol/secret")
    assert own.status_code == 200 and "This adapter is private" in html(own)
    listing = html(client.get("/"))
    assert ("carol/", "secret") in card_names(listing)
    assert '<span class="badge badge-private">private</span>' in listing
    assert '<a href="/carol" class="user-name">carol</a>' in listing


def test_owner_page_lists_their_adapters_and_an_unknown_owner_is_a_404(client, two_adapters):
    page = html(client.get("/alice"))
    assert card_names(page) == [("alice/", "chatty")]
    assert client.get("/nobody").status_code == 404
    assert client.get("/-bad-").status_code == 404


def test_lineage_lists_only_the_parents_and_children_a_viewer_may_see(app, client, make_user,
                                                                      sign_in, lora_dir,
                                                                      other_lora_dir):
    token = make_user("erin")
    publish(client, token, "erin/parent", "1.0", lora_dir)
    publish(client, token, "erin/hidden", "1.0", other_lora_dir,
            metadata={"visibility": "private"})
    publish(client, token, "erin/child", "1.0", lora_dir)
    with app.extensions["lorastack"].db.session() as session:
        ids = {row.adapter.name: row.id for row in session.scalars(select(Version))}
        session.add_all([VersionParent(version_id=ids["child"], parent_version_id=ids["parent"],
                                       weight=0.7),
                         VersionParent(version_id=ids["child"], parent_version_id=ids["hidden"],
                                       weight=-0.3)])
    child = html(client.get("/erin/child"))
    assert 'href="/erin/parent/v/1.0">erin/parent@1.0</a>' in child and "weight 0.7" in child
    assert "erin/hidden" not in child
    assert 'href="/erin/child/v/1.0">erin/child@1.0</a>' in html(client.get("/erin/parent"))
    sign_in("erin")
    assert "erin/hidden@1.0" in html(client.get("/erin/child"))


def test_pages_carry_a_content_security_policy_and_the_api_does_not_need_one(client,
                                                                             two_adapters):
    for url in ("/", "/alice/chatty", "/alice", "/no/such/page/here"):
        response = client.get(url, headers={"Accept": "text/html"})
        assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY, url
    assert "default-src 'self'" in CONTENT_SECURITY_POLICY
    assert "unsafe-inline" not in CONTENT_SECURITY_POLICY
    api = client.get("/api/v1/adapters")
    assert api.mimetype == "application/json"
    assert "Content-Security-Policy" not in api.headers


class _Scripts(HTMLParser):
    def __init__(self):
        super().__init__()
        self.inline, self.styles = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script" and not attrs.get("src"):
            self.inline.append(tag)
        if "style" in attrs or any(name.startswith("on") for name in attrs):
            self.styles.append((tag, attrs))


def test_pages_hold_no_inline_script_style_or_handler_the_policy_would_block(client,
                                                                             two_adapters):
    for url in ("/", "/alice/chatty", "/alice", "/nobody"):
        parser = _Scripts()
        parser.feed(html(client.get(url)))
        assert parser.inline == [] and parser.styles == [], url


def test_error_pages_use_the_site_layout(client):
    missing = client.get("/a/b/c/d", headers={"Accept": "text/html"})
    page = html(missing)
    assert missing.status_code == 404 and "Page not found" in page
    assert 'class="site-header"' in page and "No such page" in page
    api = client.get("/api/v1/adapters/a/b", headers={"Accept": "text/html"})
    assert api.status_code == 404 and api.mimetype == "application/problem+json"


def test_an_unexpected_error_is_a_500_page_in_the_site_layout(app, client, monkeypatch):
    from hub.services import browse

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(browse, "filter_choices", broken)
    response = client.get("/")
    page = html(response)
    assert response.status_code == 500 and "Something went wrong" in page
    assert 'class="site-header"' in page and "boom" not in page


@pytest.mark.parametrize("name", ["new", "settings", "Merge"])
def test_the_cli_refuses_a_page_path_as_a_user_name(settings, name):
    env = {"LORASTACK_DATA_DIR": str(settings.data_dir),
           "LORASTACK_DATABASE_URL": settings.database_url,
           "LORASTACK_STORAGE_URL": settings.storage_url,
           "LORASTACK_S3_ENDPOINT_URL": settings.s3_endpoint_url or ""}
    result = CliRunner().invoke(main, ["users", "create", name], env=env)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "reserved" in result.output and "(invalid_name)" in result.output


def test_an_adapter_with_no_version_yet_has_a_page_saying_so(client, make_user, sign_in):
    # The Hugging Face protocol's create_repo makes an adapter before its first commit.
    token = make_user("fay")
    created = client.post("/api/repos/create", headers=auth(token),
                          json={"name": "blank", "organization": "fay", "type": "model"})
    assert created.status_code == 200
    assert client.get("/api/v1/adapters/fay/blank").get_json()["versions"] == []
    shown = client.get("/fay/blank")
    assert shown.status_code == 200 and "Nothing published yet" in html(shown)
    assert "the publish page" not in html(shown)  # how to publish: for its owner only
    sign_in("fay")
    assert "the publish page" in html(client.get("/fay/blank"))


def test_a_catalog_page_costs_the_same_statements_for_two_cards_as_for_six(app, client,
                                                                         make_user, lora_dir):
    from sqlalchemy import event

    token = make_user("gus")
    engine = app.extensions["lorastack"].db.engine

    def statements_of(url: str) -> int:
        seen: list[str] = []

        def _record(_conn, _cursor, statement, *_):
            seen.append(statement)

        event.listen(engine, "before_cursor_execute", _record)
        try:
            assert client.get(url).status_code == 200
        finally:
            event.remove(engine, "before_cursor_execute", _record)
        return len(seen)

    counts = []
    for total in (2, 6):
        while len(client.get("/api/v1/adapters?owner=gus").get_json()["items"]) < total:
            n = len(client.get("/api/v1/adapters?owner=gus").get_json()["items"])
            assert publish(client, token, f"gus/a{n}", "1", lora_dir).status_code == 201
        statements_of("/")  # the filters' suggestions are counted once a minute
        counts.append((statements_of("/"), statements_of("/gus")))
    assert counts[0] == counts[1], counts  # no statement per card
