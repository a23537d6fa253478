"""Adversarial probes: a user's mistake gets a 4xx problem+json, never a 500; privacy holds."""
from __future__ import annotations

import base64
import io
import json

import pytest

from tests.e2e.helpers import assert_problem, auth, publish

MODEL = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
BASE = "/api/v1/adapters"
# Probes of the HTTP layer alone run once; those that reach SQL or the store run on both.
SQLITE_ONLY = pytest.mark.parametrize("settings", ["sqlite-local"], indirect=True)


def blobs(app) -> list[str]:
    return [key for key, _ in app.extensions["lorastack"].store.iter_blobs()]


def downloads(client, ref: str, token: str | None = None) -> int:
    return client.get(f"{BASE}/{ref}", headers=auth(token)).get_json()["downloads"]


def config_with(lora_dir, **changes) -> bytes:
    config = json.loads((lora_dir / CONFIG).read_text())
    config.update(changes)
    return json.dumps(config).encode()


def form(lora_dir, **fields) -> dict:
    """A publish form with the adapter's two files, for shapes the helper cannot make."""
    return {"version": "1", "license": "mit", **fields,
            "files": [(io.BytesIO((lora_dir / p).read_bytes()), p) for p in (CONFIG, MODEL)]}


def expect_problems(probes) -> None:
    """Each (label, response, status, code) is that problem+json; list every one that is not."""
    wrong = []
    for label, response, status, code in probes:
        got = (response.get_json(silent=True) or {}).get("code")
        if (response.status_code, response.mimetype, got) != (
                status, "application/problem+json", code):
            wrong.append((str(label)[:40], response.status_code, got))
    assert not wrong, f"(probe, status, code) off contract: {wrong}"


# --- the HTTP layer and auth -------------------------------------------------------------

@SQLITE_ONLY
def test_wrong_method_is_405_problem_json_with_an_allow_header(client):
    assert_problem(client.put(f"{BASE}/alice/tiny/versions"), 405, "method_not_allowed")
    response = client.delete(f"{BASE}/alice/tiny")
    assert_problem(response, 405, "method_not_allowed")
    # RFC 9110 15.5.6: a 405 MUST carry Allow; the problem renderer must keep it.
    assert "GET" in response.headers.get("Allow", ""), dict(response.headers)


@SQLITE_ONLY
def test_bad_tokens_are_401_and_a_read_token_gets_403_for_every_write(app, client, make_user,
                                                                      lora_dir):
    from sqlalchemy import update

    from hub.models import Token

    writer, reader = make_user("alice"), make_user("alice", scope="read")
    assert publish(client, writer, "alice/tiny", "1", lora_dir).status_code == 201
    expect_problems([(h, client.get("/api/v1/whoami", headers={"Authorization": h}), 401,
                      "unauthorized") for h in ("Basic YWxpY2U6cHc=", "Bearer", "Bearer   ",
                                                f"Token {writer}", writer)] + [
        ("publish", publish(client, reader, "alice/tiny", "2", lora_dir), 403, "forbidden"),
        ("patch", client.patch(f"{BASE}/alice/tiny", json={"task": "x"}, headers=auth(reader)),
         403, "forbidden"),
        ("yank", client.post(f"{BASE}/alice/tiny/versions/1/yank", json={},
                             headers=auth(reader)), 403, "forbidden")])
    with app.extensions["lorastack"].db.session() as session:
        session.execute(update(Token).values(revoked=True))
    # A revoked token is never silently anonymous, even on a public read.
    expect_problems([(url, client.get(url, headers=auth(writer)), 401, "unauthorized")
                     for url in ("/api/v1/whoami", BASE)])
    assert client.get(f"{BASE}/alice/tiny/versions/1").get_json()["yanked"] is False


# --- names and paths in every route --------------------------------------------------------

@SQLITE_ONLY
def test_odd_owner_name_or_version_in_any_route_is_4xx_problem_json(client, make_user,
                                                                    lora_dir):
    admin = make_user("root", admin=True)
    assert publish(client, admin, "root/ok", "1", lora_dir).status_code == 201
    for odd in ("\u00e4lice", "a\u0001b", "x" * 5000, "a%00b", "%2e%2e", "a b", "\u202eevil"):
        routes = [("get", f"{BASE}/{odd}/ok"), ("get", f"{BASE}/root/{odd}"),
                  ("get", f"{BASE}/root/ok/versions/{odd}"),
                  ("get", f"{BASE}/root/ok/versions/{odd}/files/{MODEL}"),
                  ("get", f"{BASE}/root/ok/versions/1/files/{odd}"),
                  ("patch", f"{BASE}/{odd}/ok"), ("post", f"{BASE}/root/ok/versions/{odd}/yank")]
        for method, url in routes:
            response = getattr(client, method)(url, headers=auth(admin), json={})
            expected = (400, "invalid_name") if response.status_code == 400 else (404, "not_found")
            expect_problems([(url, response, *expected)])
        for ref in (f"{odd}/ok", f"root/{odd}"):
            response = publish(client, admin, ref, "2", lora_dir)
            if response.status_code != 404:  # '%2e%2e' may not reach the route at all
                assert_problem(response, 400, "invalid_name")
        assert_problem(publish(client, admin, "root/ok", odd, lora_dir), 400, "invalid_version")


@SQLITE_ONLY
def test_trailing_newline_in_names_and_labels_is_refused(client, make_user, lora_dir):
    from hub.errors import InvalidName

    token = make_user("alice")
    # Python's '$' also matches before a final newline: the patterns need \Z or fullmatch.
    expect_problems([
        ("name", publish(client, token, "alice/tiny%0A", "1", lora_dir), 400, "invalid_name"),
        ("label", publish(client, token, "alice/tiny", "1.0\n", lora_dir), 400,
         "invalid_version")])
    assert client.get(BASE).get_json()["items"] == []
    with pytest.raises(InvalidName):
        make_user("bob\n")


@SQLITE_ONLY
def test_traversal_encoded_and_overlong_file_paths_are_404(client, make_user, lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/tiny", "1", lora_dir).status_code == 201
    prefix = f"{BASE}/alice/tiny/versions/1/files/"
    paths = ("../adapter_config.json", "%2e%2e/%2e%2e/hub.db", f"x%2F{MODEL}", f"./{MODEL}",
             f"{MODEL}/", f"{MODEL}%00", "/etc/passwd", "a" * 10000, "sha256/" + "0" * 64,
             "ADAPTER_CONFIG.JSON")
    # '//etc/passwd' is first merged to '/etc/passwd' by a werkzeug 308 redirect.
    expect_problems([(path, client.get(prefix + path, follow_redirects=True), 404, "not_found")
                     for path in paths])
    assert downloads(client, "alice/tiny") == 0


# --- downloads: HEAD, Range, conditional GET --------------------------------------------

def test_head_request_does_not_count_a_download(client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    head = client.head(f"{BASE}/alice/tiny/versions/1/files/{MODEL}")
    assert head.status_code in (200, 302) and head.headers["ETag"]
    assert downloads(client, "alice/tiny") == 0


@SQLITE_ONLY
def test_unsatisfiable_or_malformed_range_is_416_problem_and_not_counted(client, make_user,
                                                                         lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    url = f"{BASE}/alice/tiny/versions/1/files/{MODEL}"
    expect_problems([(h, client.get(url, headers={"Range": h}), 416, "invalid_request")
                     for h in ("bytes=99999999-", "bytes=abc", "bytes=5-1", "bytes=--3")])
    assert downloads(client, "alice/tiny") == 0


@SQLITE_ONLY
def test_conditional_get_answered_304_is_not_counted_as_a_download(client, make_user,
                                                                   lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    url = f"{BASE}/alice/tiny/versions/1/files/{MODEL}"
    etag = client.get(url).headers["ETag"]
    assert client.get(url, headers={"If-None-Match": etag}).status_code == 304
    assert downloads(client, "alice/tiny") == 1


# --- PATCH and yank bodies -------------------------------------------------------------------

@SQLITE_ONLY
def test_malformed_patch_or_yank_is_400_and_latest_is_404_once_every_version_is_yanked(
        client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir, metadata={"description": "orig"})
    patches = [b"not json", b"[1, 2]", b"null", b'{"tags": {"a": 1}}', b'{"description": 5}',
               b'{"visibility": ["public"]}', b'{"task": ["x"]}', b'{"colour": "blue"}',
               json.dumps({"description": "x" * 1_000_000}).encode(),
               b'{"description": "a\\u0000b"}', b'{"base_model": "m"}']
    yanks = [b'{"reason": 5}', b'{"reason": ["x"]}', b"nope", b"[]",
             json.dumps({"reason": "r" * 5000}).encode()]
    send = dict(headers=auth(token), content_type="application/json")
    expect_problems([(b, client.patch(f"{BASE}/alice/tiny", data=b, **send), 400,
                      "invalid_request") for b in patches]
                    + [(b, client.post(f"{BASE}/alice/tiny/versions/1/yank", data=b, **send),
                        400, "invalid_request") for b in yanks]
                    + [("latest", client.post(f"{BASE}/alice/tiny/versions/latest/yank",
                                              headers=auth(token)), 400, "invalid_version")])
    assert client.get(f"{BASE}/alice/tiny").get_json()["description"] == "orig"
    assert client.get(f"{BASE}/alice/tiny/versions/1").get_json()["yanked"] is False
    yanked = client.post(f"{BASE}/alice/tiny/versions/1/yank", json={"reason": "bad"},
                         headers=auth(token))
    assert yanked.status_code == 200 and yanked.get_json()["yank_reason"] == "bad"
    expect_problems([(url, client.get(f"{BASE}/alice/tiny/versions/{url}"), 404, "not_found")
                     for url in ("latest", f"latest/files/{MODEL}")])
    assert client.get(f"{BASE}/alice/tiny").get_json()["latest_version"] is None
    assert client.get(f"{BASE}/alice/tiny/versions/1/files/{CONFIG}").status_code == 200


@SQLITE_ONLY
def test_deeply_nested_json_is_400_not_500(client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    deep = "[" * 50_000 + "]" * 50_000
    expect_problems([
        ("patch", client.patch(f"{BASE}/alice/tiny", data=deep, headers=auth(token),
                               content_type="application/json"), 400, "invalid_request"),
        ("metadata", publish(client, token, "alice/tiny", "2", lora_dir, metadata=deep),
         400, "invalid_request")])


def test_lone_surrogate_in_text_fields_is_4xx_not_500(client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    lone = b'"\\ud800"'  # valid JSON, but no UTF-8 encoding exists for it
    send = dict(headers=auth(token), content_type="application/json")
    expect_problems([
        ("patch", client.patch(f"{BASE}/alice/tiny", data=b'{"description": ' + lone + b"}",
                               **send), 400, "invalid_request"),
        ("yank", client.post(f"{BASE}/alice/tiny/versions/1/yank",
                             data=b'{"reason": ' + lone + b"}", **send), 400, "invalid_request"),
        ("metadata", publish(client, token, "alice/tiny", "2", lora_dir,
                             metadata='{"description": "\\ud800"}'), 400, "invalid_request"),
        ("config", publish(client, token, "alice/tiny", "3", lora_dir, files={
            CONFIG: config_with(lora_dir, base_model_name_or_path="\ud800")}),
         422, "invalid_adapter_config")])
    assert client.get(f"{BASE}/alice/tiny/versions/1").get_json()["yanked"] is False


# --- the multipart form --------------------------------------------------------------------

@SQLITE_ONLY
def test_files_part_without_filename_is_refused_naming_the_filename(client, make_user,
                                                                    lora_dir):
    token = make_user("alice")
    parts = [("version", None, b"1"), ("license", None, b"mit"),
             ("files", None, (lora_dir / CONFIG).read_bytes()),
             ("files", MODEL, (lora_dir / MODEL).read_bytes())]
    body = b""
    for field, filename, content in parts:
        disposition = f'form-data; name="{field}"' + (
            f'; filename="{filename}"' if filename else "")
        body += f"--xx\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + content + b"\r\n"
    response = client.post(f"{BASE}/alice/tiny/versions", data=body + b"--xx--\r\n",
                           content_type="multipart/form-data; boundary=xx", headers=auth(token))
    assert response.status_code == 400 and response.get_json()["code"] in (
        "unexpected_file", "missing_file"), response.get_json()
    assert "filename" in response.get_json()["detail"]


@SQLITE_ONLY
def test_empty_duplicate_or_missing_file_parts_are_refused_and_nothing_is_stored(
        app, client, make_user, lora_dir):
    token = make_user("alice")
    admin = make_user("root", admin=True)
    twice = form(lora_dir)
    twice["files"].append((io.BytesIO((lora_dir / MODEL).read_bytes()), MODEL))
    url = f"{BASE}/alice/tiny/versions"
    send = dict(headers=auth(token), content_type="multipart/form-data")
    expect_problems([
        ("empty config", publish(client, token, "alice/tiny", "1", lora_dir,
                                 files={CONFIG: b""}), 422, "invalid_adapter_config"),
        ("empty weights", publish(client, token, "alice/tiny", "1", lora_dir,
                                  files={MODEL: b""}), 422, "invalid_safetensors"),
        ("empty filename", publish(client, token, "alice/tiny", "1", lora_dir,
                                   files={"": b"x"}), 400, "unexpected_file"),
        ("twice", client.post(url, data=twice, **send), 400, "unexpected_file"),
        ("no files", client.post(url, data={"version": "1", "license": "mit"}, **send),
         400, "missing_file"),
        ("no such user", publish(client, admin, "ghost/tiny", "1", lora_dir), 404,
         "not_found")])
    assert blobs(app) == []
    assert_problem(client.get(f"{BASE}/alice/tiny"), 404, "not_found")


@SQLITE_ONLY
def test_version_or_license_given_twice_is_refused(client, make_user, lora_dir):
    token = make_user("alice")
    sent = {field: client.post(f"{BASE}/alice/tiny/versions", headers=auth(token),
                               data=form(lora_dir, **{"version": label, field: values}),
                               content_type="multipart/form-data")
            for field, label, values in (("version", "1", ["1", "2"]),
                                         ("license", "3", ["mit", "apache-2.0"]))}
    assert {f: r.status_code for f, r in sent.items()} == {"version": 400, "license": 400}
    assert {r.get_json()["code"] for r in sent.values()} <= {"invalid_request",
                                                             "invalid_version"}


@SQLITE_ONLY
def test_json_body_instead_of_multipart_is_refused_saying_multipart(client, make_user):
    token = make_user("alice")
    response = client.post(f"{BASE}/alice/tiny/versions", json={"version": "1"},
                           headers=auth(token))
    assert response.status_code in (400, 415), response.status_code
    assert response.get_json()["code"] in ("invalid_request", "unsupported_format")
    assert "multipart" in response.get_json()["detail"], response.get_json()


@SQLITE_ONLY
def test_metadata_field_over_the_form_memory_limit_is_413_naming_the_field(client, make_user,
                                                                           lora_dir):
    token = make_user("alice")
    metadata = json.dumps({"description": "d" * 600_000})
    response = publish(client, token, "alice/tiny", "1", lora_dir, metadata=metadata)
    assert response.status_code == 413 and response.get_json()["code"] in (
        "invalid_request", "file_too_large")
    # The upload is far below LORASTACK_MAX_UPLOAD_BYTES: the answer must say what is big.
    assert "field" in response.get_json()["detail"], response.get_json()


# --- values wider than the database columns (PostgreSQL enforces VARCHAR(n)) --------------

def test_overlong_values_are_4xx_on_every_backend_never_500(app, client, make_user, lora_dir):
    token = make_user("alice")
    readme = ("---\nlicense: mit\nbase_model: " + "b" * 300 + "\n---\n# x\n").encode()
    cases = [
        ("metadata task", dict(metadata={"task": "t" * 100}), 400, "invalid_request"),
        ("README base_model", dict(files={
            "README.md": readme, CONFIG: config_with(lora_dir, base_model_name_or_path=None)}),
         400, "invalid_request"),
        ("config base_model", dict(files={
            CONFIG: config_with(lora_dir, base_model_name_or_path="m" * 300)}),
         422, "invalid_adapter_config"),
        ("config task_type", dict(files={CONFIG: config_with(lora_dir, task_type="T" * 100)}),
         422, "invalid_adapter_config"),
        ("config peft_type", dict(files={CONFIG: config_with(lora_dir, peft_type="X" * 40)}),
         422, "invalid_adapter_config"),
        ("LoHa rank 10**12", dict(files={CONFIG: config_with(lora_dir, peft_type="LOHA",
                                                              r=10**12)}),
         422, "invalid_adapter_config"),
        ("license_link", dict(license="other", license_name="ACME",
                              license_link="https://acme.example/" + "l" * 1500),
         400, "invalid_request")]
    expect_problems([(label, publish(client, token, "alice/tiny", f"1.{i}", lora_dir, **kw),
                      status, code) for i, (label, kw, status, code) in enumerate(cases)])
    assert_problem(client.get(f"{BASE}/alice/tiny"), 404, "not_found")


def test_nul_and_control_characters_from_config_or_card_are_4xx_and_leave_no_blob(
        app, client, make_user, lora_dir):
    token = make_user("alice")

    def card(field: str) -> bytes:
        return f'---\nlicense: mit\n{field}: "a\\0b"\n---\n# x\n'.encode()

    cases = [
        ("config base_model", {CONFIG: config_with(lora_dir, base_model_name_or_path="m\0")},
         422, "invalid_adapter_config"),
        ("config task_type", {CONFIG: config_with(lora_dir, task_type="CAUSAL_LM\0")},
         422, "invalid_adapter_config"),
        ("card description", {"README.md": card("description")}, 400, "invalid_request"),
        ("card base_model", {"README.md": card("base_model")}, 400, "invalid_request"),
        ("card task", {"README.md": card("pipeline_tag")}, 400, "invalid_request"),
        ("card license_name", {"README.md": card("license_name")}, 400, "invalid_request")]
    probes = [(label, publish(client, token, "alice/tiny", f"1.{i}", lora_dir, files=files),
               status, code) for i, (label, files, status, code) in enumerate(cases)]
    probes.append(("metadata description", publish(
        client, token, "alice/tiny", "2", lora_dir, metadata={"description": "a\0b"}),
        400, "invalid_request"))
    expect_problems(probes)
    assert blobs(app) == []
    assert_problem(client.get(f"{BASE}/alice/tiny"), 404, "not_found")


def test_card_description_over_the_api_limit_is_refused_and_listings_stay_small(
        client, make_user, lora_dir):
    token = make_user("alice")
    huge = ("---\nlicense: mit\ndescription: " + "d" * 4_000_000 + "\n---\n").encode()
    body = assert_problem(publish(client, token, "alice/huge", "1", lora_dir,
                                  files={"README.md": huge}), 400, "invalid_request")
    assert "description" in body["detail"] and "10000" in body["detail"]
    longest = ("---\nlicense: mit\ndescription: " + "d" * 10_000 + "\n---\n").encode()
    for i in range(5):
        assert publish(client, token, f"alice/a{i}", "1", lora_dir,
                       files={"README.md": longest}).status_code == 201
    listing = client.get(f"{BASE}?limit=100")
    assert [len(item["description"]) for item in listing.get_json()["items"]] == [10_000] * 5
    assert len(listing.data) < 5 * 12_000


# --- licences and README -----------------------------------------------------------------

@SQLITE_ONLY
def test_licence_case_readme_licence_and_readme_encoding(app, client, make_user, lora_dir):
    token = make_user("alice")
    response = publish(client, token, "alice/tiny", "1", lora_dir, license="Apache-2.0")
    assert response.status_code == 201 and response.get_json()["license"] == "apache-2.0"
    count = len(blobs(app))
    latin1 = "# Caf\u00e9 \u00e0 la cr\u00e8me\n".encode("latin-1")
    expect_problems([
        ("README licence", publish(client, token, "alice/tiny", "2", lora_dir, license=None,
                                   files={"README.md": b"---\nlicense: wtfpl-9\n---\n# x\n"}),
         400, "unknown_license"),
        ("latin-1 README", publish(client, token, "alice/tiny", "3", lora_dir,
                                   files={"README.md": latin1}), 400, "invalid_request")])
    assert len(blobs(app)) == count
    assert [v["version"] for v in client.get(f"{BASE}/alice/tiny").get_json()["versions"]] \
        == ["1"]
    # The filter accepts what publish accepts: the same id in another case finds it.
    found = client.get(BASE, query_string={"license": "Apache-2.0"}).get_json()["items"]
    assert [item["id"] for item in found] == ["alice/tiny"]


# --- catalog -------------------------------------------------------------------------------

def _cursor(value) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def test_crafted_or_foreign_cursors_are_400_invalid_request(client, make_user, lora_dir):
    token = make_user("alice")
    for name in ("a1", "a2"):
        publish(client, token, f"alice/{name}", "1", lora_dir)
    page = client.get(f"{BASE}?sort=name&limit=1").get_json()
    assert page["next_cursor"]
    probes = {"foreign sort": f"sort=created&cursor={page['next_cursor']}",
              "not base64": "cursor=%%%",
              "huge value": f"cursor={_cursor(['downloads', 10**30, 1])}",
              "huge id": f"cursor={_cursor(['downloads', 0, 10**30])}",
              "NUL in name": f"sort=name&cursor={_cursor(['name', chr(0), 1])}",
              "int as time": f"sort=created&cursor={_cursor(['created', 5, 1])}",
              "object": f"cursor={_cursor({'a': 1})}"}
    expect_problems([(label, client.get(f"{BASE}?{query}"), 400, "invalid_request")
                     for label, query in probes.items()])


def test_search_treats_sql_wildcards_and_quotes_literally(client, make_user, lora_dir):
    token = make_user("alice")
    for name in ("a_b", "axb"):
        publish(client, token, f"alice/{name}", "1", lora_dir)

    def names(search: str) -> list[str]:
        response = client.get(BASE, query_string={"search": search})
        assert response.status_code == 200, response.get_json()
        return sorted(item["name"] for item in response.get_json()["items"])

    # Search is by words (hub.services.search): punctuation only separates them, so "_"
    # and "%" are never wildcards; "a%b" is the words "a" and "b", which "axb" lacks.
    assert names("a_b") == names("a%b") == ["a_b"]
    for text in ("%", "_", "'", "\"", "\\", "' OR 1=1 --", "\U0001f600", "[x-z]*"):
        assert names(text) == [], text


# --- privacy and yank ----------------------------------------------------------------------

def test_private_adapter_is_404_everywhere_for_others_and_visible_to_admin(client, make_user,
                                                                           lora_dir):
    alice = make_user("alice")
    alice_read = make_user("alice", scope="read")
    bob = make_user("bob")
    admin = make_user("root", admin=True)
    publish(client, alice, "alice/secret", "1", lora_dir,
            metadata={"visibility": "private", "tags": ["hush"], "task": "whisper"})
    reads = [f"{BASE}/alice/secret", f"{BASE}/alice/secret/versions/1",
             f"{BASE}/alice/secret/versions/latest",
             f"{BASE}/alice/secret/versions/1/files/{MODEL}",
             f"{BASE}/alice/secret/versions/latest/files/{CONFIG}"]
    lists = ["tag=hush", "task=whisper", "owner=alice", "search=secret", "sort=name",
             "base_model=tiny-llama-64", "license=apache-2.0"]
    for who in (None, bob):
        expect_problems([(url, client.get(url, headers=auth(who)), 404, "not_found")
                         for url in reads])
        assert all(client.head(url, headers=auth(who)).status_code == 404 for url in reads)
        for query in lists:
            assert client.get(f"{BASE}?{query}", headers=auth(who)).get_json()["items"] == []
    expect_problems([
        ("patch", client.patch(f"{BASE}/alice/secret", json={"task": "x"}, headers=auth(bob)),
         404, "not_found"),
        ("yank", client.post(f"{BASE}/alice/secret/versions/1/yank", json={},
                             headers=auth(bob)), 404, "not_found")])
    for who in (admin, alice_read):
        for url in reads[:3]:
            assert client.get(url, headers=auth(who)).status_code == 200, (url, who)
        for query in lists:
            items = client.get(f"{BASE}?{query}", headers=auth(who)).get_json()["items"]
            assert [i["id"] for i in items] == ["alice/secret"], query
    assert downloads(client, "alice/secret", admin) == 0
    assert client.patch(f"{BASE}/alice/secret", json={"task": "y"},
                        headers=auth(admin)).status_code == 200
