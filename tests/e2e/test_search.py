"""Ranked search over HTTP, on both backends: what matches, in which order, page by page."""
from __future__ import annotations

import pytest

from tests.e2e.helpers import assert_problem, auth, publish

MODEL = "adapter_model.safetensors"

# name, tags, description, downloads. The expected orders below are the rule of
# hub.services.search; each backend must give exactly them (so they give the same).
CATALOG = [
    ("mistral-sql", ["sql"], "Turns questions into SQL queries.", 0),
    ("coder", ["mistral", "code"], "Writes Python.", 1),
    ("poet", ["poetry"], "Fine-tuned from Mistral on sonnets: café poems.", 0),
    ("mistral-chat", ["chat"], "", 2),
    ("llama-helper", [], "Nothing about the m-word; 日本語 text too.", 3),
    ("Mistral_Instruct", ["instruct", "mistral"], "mistral mistral", 0),
]


@pytest.fixture
def catalog(client, make_user, lora_dir):
    alice = make_user("alice")
    bob = make_user("bob")
    for name, tags, description, downloads in CATALOG:
        response = publish(client, alice, f"alice/{name}", "1", lora_dir,
                           metadata={"tags": tags, "description": description})
        assert response.status_code == 201, response.get_json()
        for _ in range(downloads):
            client.get(f"/api/v1/adapters/alice/{name}/versions/1/files/{MODEL}")
    assert publish(client, bob, "bob/mistral-secret", "1", lora_dir,
                   metadata={"visibility": "private", "tags": ["mistral"]}).status_code == 201
    return {"alice": alice, "bob": bob}


def names(client, query: str, token: str | None = None) -> list[str]:
    response = client.get(f"/api/v1/adapters{query}", headers=auth(token))
    assert response.status_code == 200, response.get_json()
    return [item["id"] for item in response.get_json()["items"]]


def every_page(client, query: str, token: str | None = None) -> list[str]:
    seen, cursor = [], None
    while True:
        url = f"/api/v1/adapters{query}&limit=1" + (f"&cursor={cursor}" if cursor else "")
        response = client.get(url, headers=auth(token))
        assert response.status_code == 200, response.get_json()
        page = response.get_json()
        seen += [item["id"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen


def test_search_ranks_name_over_tags_over_description_then_downloads(client, catalog):
    # Instruct scores 4 (name); so do sql and chat, and chat has more downloads; coder's
    # tag scores 2; poet's description 1. Instruct's repeated words count once.
    assert names(client, "?search=mistral") == [
        "alice/mistral-chat", "alice/Mistral_Instruct", "alice/mistral-sql", "alice/coder",
        "alice/poet"]


def test_search_words_are_prefixes_and_all_must_match(client, catalog):
    assert names(client, "?search=mistr") == names(client, "?search=mistral")
    assert names(client, "?search=MISTRAL%20sql") == ["alice/mistral-sql"]
    assert names(client, "?search=instr%20mis") == ["alice/Mistral_Instruct"]
    assert names(client, "?search=questions") == ["alice/mistral-sql"]
    assert names(client, "?search=poetr") == ["alice/poet"]
    assert names(client, "?search=stral") == []  # inside a word: not a match


def test_search_folds_case_accents_and_reads_any_script(client, catalog):
    for text in ("cafe", "CAFÉ", "café"):
        assert names(client, f"?search={text}") == ["alice/poet"], text
    assert names(client, "?search=日本") == ["alice/llama-helper"]


def test_relevance_is_the_default_with_search_and_downloads_order_without(client, catalog):
    ranked = names(client, "?search=mistral")
    assert names(client, "?search=mistral&sort=relevance") == ranked
    by_downloads = names(client, "?search=mistral&sort=downloads")
    assert by_downloads[:2] == ["alice/mistral-chat", "alice/coder"]
    assert sorted(by_downloads) == sorted(ranked)
    assert names(client, "?sort=relevance") == names(client, "?sort=downloads")
    assert names(client, "?search=%20") == names(client, "")
    assert names(client, "?search=!!!") == []


def test_search_pages_follow_the_ranking_without_duplicates_or_gaps(client, catalog):
    for query in ("?search=mistral", "?search=m", "?search=mistral&sort=name",
                  "?sort=relevance", "?search=mistral&sort=created"):
        full = names(client, query + "&limit=100")
        assert every_page(client, query) == full, query
    assert len(names(client, "?search=m&limit=100")) == 6


def test_private_adapters_never_appear_in_search_but_to_their_owner(client, make_user, catalog):
    for token in (None, catalog["alice"], make_user("carol")):
        assert "bob/mistral-secret" not in names(client, "?search=mistral", token)
        assert "bob/mistral-secret" not in every_page(client, "?search=mistral", token)
    assert names(client, "?search=secret", catalog["bob"]) == ["bob/mistral-secret"]
    admin = make_user("root", admin=True)
    assert "bob/mistral-secret" in names(client, "?search=mistral", admin)


def test_search_follows_patch_and_tag_changes(client, catalog):
    alice = catalog["alice"]
    response = client.patch("/api/v1/adapters/alice/llama-helper", headers=auth(alice),
                            json={"tags": ["zephyr"], "description": "Now about quokkas."})
    assert response.status_code == 200, response.get_json()
    assert names(client, "?search=zeph") == ["alice/llama-helper"]
    assert names(client, "?search=quokka") == ["alice/llama-helper"]
    assert names(client, "?search=nothing") == []
    client.patch("/api/v1/adapters/alice/llama-helper", headers=auth(alice), json={"tags": []})
    assert names(client, "?search=zephyr") == []


@pytest.mark.parametrize("text", [
    '"mistral', "mistral OR sql", "-mistral", "NEAR(mistral", "*", "mistral*", "a:b",
    "'", "\\", "%", "_", "{search_name}:mistral", "AND", "NOT mistral", "''::tsquery",
    "mistral & !sql", "😀", " ", "\u00a0", "ﬁne", "x" * 200])
def test_search_text_with_operators_and_quotes_is_words_never_an_error(client, catalog, text):
    response = client.get("/api/v1/adapters", query_string={"search": text})
    assert response.status_code == 200, (text, response.get_json())


def test_operators_are_plain_words(client, catalog):
    assert names(client, "?search=mistral%20OR%20sql") == []  # "or" is a word: none has it
    assert names(client, "?search=%22mistral%22") == names(client, "?search=mistral")
    assert names(client, "?search=%EF%AC%81ne") == ["alice/poet"]  # the ligature "ﬁ"


def test_a_search_of_too_many_words_is_refused(client):
    assert_problem(client.get("/api/v1/adapters?search=" + "+".join("abcdefghi")), 400,
                   "invalid_request")


def test_a_cursor_of_one_sort_is_refused_for_another(client, catalog):
    page = client.get("/api/v1/adapters?search=mistral&limit=1").get_json()
    assert_problem(client.get(f"/api/v1/adapters?search=mistral&sort=name&limit=1"
                              f"&cursor={page['next_cursor']}"), 400, "invalid_request")


@pytest.mark.parametrize("window", [1, 2, 3, 100])
def test_level_by_level_pages_give_the_full_ranking_whatever_their_window(
        client, catalog, monkeypatch, window):
    from hub.services import relevance

    queries = ("?search=mistral", "?search=m", "?search=mistral%20chat",
               "?search=mistral%20sql%20questions")
    monkeypatch.setattr(relevance, "ranked_keys", lambda *args: None)
    ranked = {query: names(client, query + "&limit=100") for query in queries}
    monkeypatch.undo()
    monkeypatch.setattr(relevance, "WINDOW_PER_ROW", window)
    monkeypatch.setattr(relevance, "FEW_MATCHES", 0)
    for query, full in ranked.items():
        assert every_page(client, query) == full, (window, query)
        for limit in (2, 3):
            pages, cursor = [], None
            while True:
                url = f"/api/v1/adapters{query}&limit={limit}" + (
                    f"&cursor={cursor}" if cursor else "")
                page = client.get(url).get_json()
                pages += [item["id"] for item in page["items"]]
                cursor = page["next_cursor"]
                if cursor is None:
                    break
            assert pages == full, (window, query, limit)
