"""Reading the registry over HTTP: files, latest, yank, privacy, search, service endpoints."""
from __future__ import annotations

import hashlib
from urllib.parse import parse_qs, urlsplit

import pytest
import requests  # the S3 presigned URLs are fetched over real HTTP

from tests.e2e.helpers import assert_problem, auth, publish

MODEL = "adapter_model.safetensors"


def is_s3(settings) -> bool:
    return settings.storage_url.startswith("s3://")


def fetch(client, url, headers=None):
    """GET a file, following the S3 redirect with a real HTTP request."""
    response = client.get(url, headers=headers or {})
    if response.status_code == 302:
        return requests.get(response.headers["Location"], headers=headers or {}, timeout=30)
    return response


def body_of(response) -> bytes:
    return response.content if isinstance(response, requests.Response) else response.data


def test_files_download_byte_for_byte_with_sha256_etag(settings, client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)
    for path in ("adapter_config.json", MODEL):
        expected = (lora_dir / path).read_bytes()
        url = f"/api/v1/adapters/alice/tiny/versions/1.0/files/{path}"
        direct = client.get(url)
        assert direct.headers["ETag"] == f'"{hashlib.sha256(expected).hexdigest()}"'
        if is_s3(settings):
            assert direct.status_code == 302
        else:
            assert direct.status_code == 200
        assert body_of(fetch(client, url)) == expected


def test_range_requests_return_the_requested_bytes(settings, client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)
    expected = (lora_dir / MODEL).read_bytes()
    url = f"/api/v1/adapters/alice/tiny/versions/1.0/files/{MODEL}"
    response = fetch(client, url, headers={"Range": "bytes=8-99"})
    assert response.status_code == 206 and body_of(response) == expected[8:100]
    if not is_s3(settings):
        cached = client.get(url, headers={"If-None-Match": response.headers["ETag"]})
        assert cached.status_code == 304


def test_downloads_of_the_weights_are_counted_and_sortable(client, make_user, lora_dir,
                                                           other_lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/popular", "1", lora_dir)
    publish(client, token, "alice/quiet", "1", other_lora_dir)
    for _ in range(3):
        client.get(f"/api/v1/adapters/alice/popular/versions/1/files/{MODEL}")
    client.get("/api/v1/adapters/alice/quiet/versions/1/files/adapter_config.json")
    assert client.get("/api/v1/adapters/alice/popular").get_json()["downloads"] == 3
    assert client.get("/api/v1/adapters/alice/quiet").get_json()["downloads"] == 0
    items = client.get("/api/v1/adapters?sort=downloads").get_json()["items"]
    assert [i["id"] for i in items] == ["alice/popular", "alice/quiet"]


def test_latest_skips_yanked_versions_which_stay_downloadable(client, make_user, lora_dir,
                                                              other_lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)
    publish(client, token, "alice/tiny", "2.0", other_lora_dir)
    assert client.get("/api/v1/adapters/alice/tiny/versions/latest").get_json()["version"] == "2.0"
    bob = make_user("bob")
    assert_problem(client.post("/api/v1/adapters/alice/tiny/versions/2.0/yank",
                               json={"reason": "x"}, headers=auth(bob)), 403, "forbidden")
    yanked = client.post("/api/v1/adapters/alice/tiny/versions/2.0/yank",
                         json={"reason": "broken"}, headers=auth(token))
    assert yanked.status_code == 200
    assert yanked.get_json()["yanked"] is True and yanked.get_json()["yank_reason"] == "broken"
    latest = client.get("/api/v1/adapters/alice/tiny/versions/latest").get_json()
    assert latest["version"] == "1.0"
    assert client.get("/api/v1/adapters/alice/tiny").get_json()["latest_version"] == "1.0"
    still = fetch(client, f"/api/v1/adapters/alice/tiny/versions/2.0/files/{MODEL}")
    assert body_of(still) == (other_lora_dir / MODEL).read_bytes()
    client.post("/api/v1/adapters/alice/tiny/versions/1.0/yank", headers=auth(token))
    assert_problem(client.get("/api/v1/adapters/alice/tiny/versions/latest"), 404, "not_found")


def test_private_adapters_are_invisible_to_others(client, make_user, lora_dir):
    alice = make_user("alice")
    bob = make_user("bob")
    admin = make_user("root", admin=True)
    response = publish(client, alice, "alice/secret", "1", lora_dir,
                       metadata={"visibility": "private"})
    assert response.status_code == 201
    urls = ["/api/v1/adapters/alice/secret", "/api/v1/adapters/alice/secret/versions/1",
            "/api/v1/adapters/alice/secret/versions/latest",
            f"/api/v1/adapters/alice/secret/versions/1/files/{MODEL}"]
    for who in (None, bob):
        for url in urls:
            assert_problem(client.get(url, headers=auth(who)), 404, "not_found")
        for query in ("", "?search=secret", "?owner=alice"):
            items = client.get(f"/api/v1/adapters{query}", headers=auth(who)).get_json()["items"]
            assert items == []
    for who in (alice, admin):
        assert client.get(urls[0], headers=auth(who)).status_code == 200
        items = client.get("/api/v1/adapters?search=secret", headers=auth(who)).get_json()
        assert [i["id"] for i in items["items"]] == ["alice/secret"]
    # Bob's attempt to yank it looks exactly like a missing adapter.
    assert_problem(client.post("/api/v1/adapters/alice/secret/versions/1/yank",
                               headers=auth(bob)), 404, "not_found")


def test_patch_changes_metadata_for_the_owner_only(client, make_user, lora_dir):
    alice = make_user("alice")
    bob = make_user("bob")
    publish(client, alice, "alice/tiny", "1", lora_dir)
    assert_problem(client.patch("/api/v1/adapters/alice/tiny", json={"task": "x"},
                                headers=auth(bob)), 403, "forbidden")
    patched = client.patch("/api/v1/adapters/alice/tiny", headers=auth(alice),
                           json={"description": "new", "tags": ["a", "b"], "task": "chat",
                                 "visibility": "private"})
    assert patched.status_code == 200, patched.get_json()
    body = patched.get_json()
    assert (body["description"], body["tags"], body["task"], body["visibility"]) == \
        ("new", ["a", "b"], "chat", "private")
    assert_problem(client.get("/api/v1/adapters/alice/tiny"), 404, "not_found")
    assert_problem(client.patch("/api/v1/adapters/alice/tiny", headers=auth(alice),
                                json={"visibility": "hidden"}), 400, "invalid_request")


def test_search_filters_and_keyset_pagination(client, make_user, lora_dir, other_lora_dir):
    alice = make_user("alice")
    bob = make_user("bob")
    publish(client, alice, "alice/poet", "1", lora_dir, license="mit",
            metadata={"tags": ["poetry"], "task": "text-generation",
                      "description": "writes sonnets"})
    publish(client, alice, "alice/coder", "1", other_lora_dir,
            metadata={"tags": ["code"], "base_model": "other/base"})
    for i in range(3):
        publish(client, bob, f"bob/n{i}", "1", lora_dir, metadata={"tags": ["misc"]})

    def ids(query):
        response = client.get(f"/api/v1/adapters{query}")
        assert response.status_code == 200, response.get_json()
        return sorted(i["id"] for i in response.get_json()["items"])

    assert ids("?search=SONNET") == ["alice/poet"]
    assert ids("?search=coder") == ["alice/coder"]
    assert ids("?search=poetry") == ["alice/poet"]
    assert ids("?license=mit") == ["alice/poet"]
    assert ids("?tag=code") == ["alice/coder"]
    assert ids("?task=text-generation") == ["alice/poet"]
    assert ids("?base_model=other/base") == ["alice/coder"]
    assert ids("?owner=bob") == ["bob/n0", "bob/n1", "bob/n2"]
    assert ids("?search=100%25") == []

    for sort in ("name", "created", "updated", "downloads"):
        seen, cursor = [], None
        while True:
            query = f"?sort={sort}&limit=2" + (f"&cursor={cursor}" if cursor else "")
            page = client.get(f"/api/v1/adapters{query}").get_json()
            assert len(page["items"]) <= 2
            seen += [i["id"] for i in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(set(seen)) and len(seen) == 5, (sort, seen)
        if sort == "name":
            assert [s.split("/")[1] for s in seen] == sorted(s.split("/")[1] for s in seen)


@pytest.mark.parametrize("query", ["?limit=0", "?limit=101", "?limit=ten", "?sort=stars",
                                   "?cursor=garbage", "?colour=blue"])
def test_malformed_query_parameters_are_refused(client, query):
    assert_problem(client.get(f"/api/v1/adapters{query}"), 400, "invalid_request")


def test_health_licenses_and_whoami(client, make_user):
    health = client.get("/api/v1/health")
    assert health.status_code == 200
    assert health.get_json()["database"] == "ok" and health.get_json()["storage"] == "ok"
    licenses = {item["id"]: item for item in client.get("/api/v1/licenses").get_json()["items"]}
    for required in ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
                     "cc-by-sa-4.0", "openrail", "llama2", "llama3", "llama3.1", "gemma",
                     "other"):
        assert required in licenses
    assert licenses["cc-by-nd-4.0"]["derivatives"] == "forbidden"
    assert licenses["cc-by-nc-4.0"]["commercial_use"] is False
    assert set(licenses["mit"]) >= {"id", "name", "url", "spdx", "commercial_use",
                                    "derivatives", "attribution", "use_restrictions"}
    token = make_user("root", admin=True, scope="read")
    me = client.get("/api/v1/whoami", headers=auth(token)).get_json()
    assert me == {"name": "root", "is_admin": True, "scopes": ["read"]}
    assert_problem(client.get("/api/v1/whoami"), 401, "unauthorized")
    assert_problem(client.get("/api/v1/nowhere"), 404, "not_found")


def test_health_names_the_failing_store(settings, make_user):
    from hub import create_app

    if is_s3(settings):
        broken = settings.with_overrides(storage_url="s3://no-such-bucket-here/x")
    else:
        blocker = settings.data_dir / "not-a-dir"
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("a file where the blob folder should be")
        broken = settings.with_overrides(storage_url=f"file://{blocker}")
    app = create_app(broken)
    response = app.test_client().get("/api/v1/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["storage"] == "unavailable" and body["database"] == "ok"
    assert body["code"] == "storage_unavailable"
    app.extensions["lorastack"].close()


def test_a_database_that_is_down_gives_503_not_500(tmp_path):
    from hub import create_app
    from hub.config import Settings
    from tests.support.moto_server import free_port

    # The backend fixtures are not needed: the database is the part that is down.
    down = Settings(data_dir=tmp_path, secret_key="test",
                    database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none")
    app = create_app(down)
    client = app.test_client()
    health = client.get("/api/v1/health")
    assert health.status_code == 503 and health.get_json()["database"] == "unavailable"
    assert_problem(client.get("/api/v1/adapters"), 503, "database_unavailable")
    app.extensions["lorastack"].close()


def test_metrics_count_requests_uploads_and_downloads(client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    client.get(f"/api/v1/adapters/alice/tiny/versions/1/files/{MODEL}")
    client.get("/api/v1/adapters/nobody/nothing")
    text = client.get("/metrics").get_data(as_text=True)
    size = sum(p.stat().st_size for p in lora_dir.iterdir())
    assert "lorastack_uploads_total 1.0" in text
    assert f"lorastack_upload_bytes_total {float(size)}" in text
    assert "lorastack_downloads_total 1.0" in text
    assert ('lorastack_http_requests_total{endpoint="api_v1.get_adapter",method="GET",'
            'status="404"} 1.0') in text


def test_request_ids_are_echoed_only_when_short_and_plain(client):
    assert client.get("/api/v1/health", headers={"X-Request-ID": "abc-1"}).headers[
        "X-Request-ID"] == "abc-1"
    odd = client.get("/api/v1/health", headers={"X-Request-ID": "x" * 65})
    assert len(odd.headers["X-Request-ID"]) == 16 and odd.headers["X-Request-ID"] != "x" * 16


@pytest.mark.parametrize("label", ["1.0", "latest"])
def test_private_files_are_never_marked_for_shared_caches(settings, client, make_user,
                                                          lora_dir, label):
    token = make_user("alice")
    publish(client, token, "alice/secret", "1.0", lora_dir, metadata={"visibility": "private"})
    url = f"/api/v1/adapters/alice/secret/versions/{label}/files/{MODEL}"
    response = client.get(url, headers=auth(token))
    assert response.status_code == (302 if is_s3(settings) else 200)
    assert response.headers["Cache-Control"] == "private, no-store"
    assert "Expires" not in response.headers
    if is_s3(settings):  # the store serves the bytes with the same policy
        fetched = requests.get(response.headers["Location"], timeout=30)
        assert fetched.headers["Cache-Control"] == "private, no-store"
        assert fetched.content == (lora_dir / MODEL).read_bytes()


def test_public_files_have_one_cache_policy_whose_headers_agree(settings, client, make_user,
                                                                lora_dir):
    from hub.services.downloads import PUBLIC_MAX_AGE

    token = make_user("alice")
    publish(client, token, "alice/open", "1.0", lora_dir)
    pinned = client.get(f"/api/v1/adapters/alice/open/versions/1.0/files/{MODEL}")
    latest = client.get(f"/api/v1/adapters/alice/open/versions/latest/files/{MODEL}")
    for response in (pinned, latest):
        assert "Expires" not in response.headers and "private" not in response.headers[
            "Cache-Control"]
    assert latest.headers["Cache-Control"] == "public, no-cache"
    if is_s3(settings):
        # A cached redirect must not outlive the signature of the URL it points to.
        age = int(pinned.headers["Cache-Control"].split("max-age=")[1])
        assert 0 < age <= settings.presign_ttl // 2
        # A URL handed out before the adapter turns private works until it expires: 60 s.
        signed = parse_qs(urlsplit(pinned.headers["Location"]).query)
        assert signed["X-Amz-Expires"] == ["60"]
        fetched = requests.get(pinned.headers["Location"], timeout=30)
        assert fetched.headers["Cache-Control"] == f"public, max-age={PUBLIC_MAX_AGE}"
    else:
        assert pinned.headers["Cache-Control"] == f"public, max-age={PUBLIC_MAX_AGE}"


def test_a_readme_is_served_as_plain_text_and_nothing_is_sniffed(settings, client, make_user,
                                                                 lora_dir):
    token = make_user("alice")
    readme = b"# tiny\n<script>alert(document.cookie)</script>\n"
    assert publish(client, token, "alice/tiny", "1", lora_dir,
                   files={"README.md": readme}).status_code == 201
    response = client.get("/api/v1/adapters/alice/tiny/versions/1/files/README.md")
    if not is_s3(settings):  # on S3 the bytes come from the store's origin, not the API's
        assert response.headers["Content-Type"] == "text/plain; charset=utf-8"
        assert response.data == readme
    for each in (response, client.get("/api/v1/health"), client.get("/api/v1/nowhere"),
                 client.get("/api/v1/adapters/alice/tiny")):
        assert each.headers["X-Content-Type-Options"] == "nosniff", each.status_code


def test_a_503_names_no_internal_host_to_an_anonymous_caller(tmp_path, caplog):
    from hub import create_app
    from hub.config import Settings
    from tests.support.moto_server import free_port

    port = free_port()
    down = Settings(data_dir=tmp_path, secret_key="test",
                    database_url=f"postgresql+psycopg://postgres@127.0.0.1:{port}/none")
    app = create_app(down)
    client = app.test_client()
    health = client.get("/api/v1/health")
    listing = client.get("/api/v1/adapters")
    assert health.status_code == 503 and health.get_json()["code"] == "database_unavailable"
    assert_problem(listing, 503, "database_unavailable")
    for response in (health, listing):
        text = response.get_data(as_text=True)
        assert str(port) not in text and "127.0.0.1" not in text, text
    assert str(port) in caplog.text  # the operator still finds the cause in the log
    app.extensions["lorastack"].db.dispose()
