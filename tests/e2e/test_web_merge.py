"""The merge pages over the merge services, on both backends: the builder and its plan
route, submitting, the status JSON, cancelling, downloading and publishing as the signed-in
user; another user's merge, a post without the CSRF token and an anonymous visitor."""
from __future__ import annotations

import hashlib
import io
import re
import time
import zipfile

import pytest

from tests.e2e.helpers import publish

PASSWORD = "correct horse battery"
BROWSER = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
SCRIPT = {"Accept": "application/json"}


@pytest.fixture
def accounts(app, make_user, lora_dir, other_lora_dir):
    """alice (alice/a apache-2.0, alice/b mit) and bob (bob/secret, private), both with
    passwords; returns alice's API token."""
    from hub.services.accounts import set_password

    token = make_user("alice")
    bob = make_user("bob")
    with app.extensions["lorastack"].db.session() as session:
        set_password(session, "alice", PASSWORD)
        set_password(session, "bob", PASSWORD)
    client = app.test_client()
    assert publish(client, token, "alice/a", "1.0", lora_dir).status_code == 201
    assert publish(client, token, "alice/b", "2.0", other_lora_dir,
                   license="mit").status_code == 201
    assert publish(client, bob, "bob/secret", "1.0", lora_dir,
                   metadata={"visibility": "private"}).status_code == 201
    return token


def csrf_of(client, path: str) -> str:
    page = client.get(path, headers=BROWSER).get_data(as_text=True)
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def sign_in(client, name: str) -> str:
    """Sign in through the form; this session's CSRF token."""
    response = client.post("/signin", headers=BROWSER, data={
        "name": name, "password": PASSWORD, "csrf_token": csrf_of(client, "/signin")})
    assert response.status_code == 303, response.get_data(as_text=True)
    return csrf_of(client, "/merge")


def builder_form(csrf: str, *sources, action: str | None = None, **params) -> dict:
    data = {"csrf_token": csrf, "adapter": [], "version": [], "weight": [],
            "method": "linear", **params}
    for adapter, version, weight in (*sources, ("", "", "1")):
        data["adapter"].append(adapter)
        data["version"].append(version)
        data["weight"].append(str(weight))
    if action:
        data["action"] = action
    return data


def field_error(page: str, key: str) -> str:
    match = re.search(rf'id="{re.escape(key)}-error"[^>]*>([^<]*)<', page)
    return match.group(1).strip() if match else ""


def wait(client, merge_id: str, timeout: float = 120) -> dict:
    """Poll the page's status route until the merge ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/merges/{merge_id}/status", headers=SCRIPT).get_json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"merge {merge_id} did not end: {body}")


def submit(client, csrf: str, *sources, **params) -> str:
    response = client.post("/merge", headers=BROWSER,
                           data=builder_form(csrf, *sources, action="merge", **params))
    assert response.status_code == 303, response.get_data(as_text=True)
    match = re.fullmatch(r"/merges/([0-9a-f]{32})", response.headers["Location"])
    assert match, response.headers["Location"]
    return match.group(1)


def test_anonymous_visitors_are_sent_to_sign_in_and_back(client, accounts):
    for path in ("/merge?add=alice/a@1.0", "/merges", "/merges/" + "0" * 32):
        response = client.get(path, headers=BROWSER)
        assert response.status_code == 303
        assert response.headers["Location"].startswith("/signin?next=")
    assert client.get("/merge/suggest?q=a", headers=SCRIPT).status_code == 401
    response = client.post("/signin", headers=BROWSER, data={
        "name": "alice", "password": PASSWORD, "next": "/merge?add=alice/a@1.0",
        "csrf_token": csrf_of(client, "/signin")})
    assert response.headers["Location"] == "/merge?add=alice/a@1.0"


def test_add_preloads_sources_and_the_page_shows_their_plan(client, accounts):
    sign_in(client, "alice")
    page = client.get("/merge?add=alice/a@1.0&add=alice/b@2.0", headers=BROWSER)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'value="alice/a"' in html and 'value="alice/b"' in html
    assert 'id="plan-license">other' in html  # apache-2.0 + mit
    assert "alice/a@1.0 is under apache-2.0" in html
    for control in re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html):
        assert f'for="{control}"' in html, f"#{control} has no label"


def test_plan_route_answers_the_plan_service_and_places_its_refusals(client, accounts):
    csrf = sign_in(client, "alice")
    response = client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": csrf},
                           data=builder_form(csrf, ("alice/a", "1.0", "0.7"),
                                             ("alice/b", "latest", "-0.3"), rank="8"))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [(s["adapter"], s["version"], s["weight"]) for s in body["plan"]["sources"]] == [
        ("alice/a", "1.0", 0.7), ("alice/b", "2.0", -0.3)]
    assert body["plan"]["license"]["id"] == "other" and body["plan"]["modules"] == 6
    assert "alice/b@2.0 is under mit" in body["html"]
    # A source alice cannot see is the plan service's 404, beside that source.
    response = client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": csrf},
                           data=builder_form(csrf, ("alice/a", "1.0", 1), ("bob/secret", "", 1)))
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
    assert set(response.get_json()["errors"]) == {"source-1"}
    # A density outside (0, 1] is the spec's own refusal, beside the density.
    response = client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": csrf},
                           data=builder_form(csrf, ("alice/a", "1.0", 1), method="ties",
                                             density="1.5"))
    errors = response.get_json()["errors"]
    assert response.status_code == 400 and "density must be in (0, 1]" in errors["density"]
    # A weight that is not a number never reaches the service.
    response = client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": csrf},
                           data=builder_form(csrf, ("alice/a", "1.0", "heavy")))
    assert response.get_json()["errors"] == {
        "source-0-weight": "The weight must be a number, e.g. 0.7 or -0.5."}


def test_check_plan_without_script_rerenders_with_the_plan_or_errors(client, accounts):
    csrf = sign_in(client, "alice")
    response = client.post("/merge", headers=BROWSER, data=builder_form(
        csrf, ("alice/a", "1.0", 1), ("alice/b", "2.0", 1), action="plan", rank="4"))
    html = response.get_data(as_text=True)
    assert response.status_code == 200 and 'id="plan-license">other' in html
    response = client.post("/merge", headers=BROWSER, data=builder_form(
        csrf, ("alice/a", "1.0", 1), ("alice/b", "2.0", 1), action="plan", rank="5000"))
    assert response.status_code == 400
    assert "LORASTACK_MAX_MERGE_RANK" in field_error(response.get_data(as_text=True), "rank")
    # "Remove" on the first source drops it and plans the rest.
    response = client.post("/merge", headers=BROWSER, data=builder_form(
        csrf, ("alice/a", "1.0", 1), ("alice/b", "2.0", 1), action="remove:0"))
    html = response.get_data(as_text=True)
    assert 'value="alice/a"' not in html and 'id="plan-license">mit' in html


def test_suggestions_are_visible_adapters_and_narrow_to_the_base_model(client, accounts):
    sign_in(client, "alice")
    names = [item["adapter"] for item in
             client.get("/merge/suggest?q=secret", headers=SCRIPT).get_json()["items"]]
    assert names == []  # bob's private adapter
    found = client.get("/merge/suggest?q=a", headers=SCRIPT).get_json()["items"]
    assert "alice/a" in [item["adapter"] for item in found]
    base = next(item["base_model"] for item in found if item["adapter"] == "alice/a")
    assert client.get("/merge/suggest", query_string={"q": "a", "base_model": "other/model"},
                      headers=SCRIPT).get_json()["items"] == []
    narrowed = client.get("/merge/suggest", query_string={"q": "a", "base_model": base},
                          headers=SCRIPT).get_json()["items"]
    assert "alice/a" in [item["adapter"] for item in narrowed]
    versions = client.get("/merge/versions?adapter=alice/b", headers=SCRIPT).get_json()
    assert versions["versions"] == [{"version": "2.0", "yanked": False}]
    assert client.get("/merge/versions?adapter=bob/secret", headers=SCRIPT).status_code == 404


def test_submit_then_status_download_and_publish_through_the_pages(client, accounts):
    csrf = sign_in(client, "alice")
    merge_id = submit(client, csrf, ("alice/a", "1.0", "0.7"), ("alice/b", "2.0", "-0.3"))
    page = client.get(f"/merges/{merge_id}", headers=BROWSER)
    assert page.status_code == 200 and 'id="merge-progress-bar"' in page.get_data(as_text=True)
    done = wait(client, merge_id)
    assert done["status"] == "succeeded" and done["progress"] == 1.0, done
    html = client.get(f"/merges/{merge_id}", headers=BROWSER).get_data(as_text=True)
    assert f"/merges/{merge_id}/archive" in html and 'id="publish-merge-form"' in html

    archive = client.get(f"/merges/{merge_id}/archive")
    if archive.status_code == 302:  # S3: a presigned URL, as the API's download
        import requests

        body = requests.get(archive.headers["Location"], timeout=30).content
    else:
        assert archive.status_code == 200
        body = archive.get_data()
    assert archive.headers["Cache-Control"] == "private, no-store"
    assert hashlib.sha256(body).hexdigest() == done["archive"]["sha256"]
    names = set(zipfile.ZipFile(io.BytesIO(body)).namelist())
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    config = client.get(f"/merges/{merge_id}/files/adapter_config.json")
    assert config.status_code in (200, 302)

    # The derived licence is "other" (apache-2.0 + mit): the form asks for its link.
    assert 'id="publish-license-link"' in html
    response = client.post(f"/merges/{merge_id}/publish", headers=BROWSER, data={
        "csrf_token": csrf, "name": "blend", "version": "1.0.0", "visibility": "public"})
    assert response.status_code == 400
    assert "license_link" in field_error(response.get_data(as_text=True), "license_link")
    response = client.post(f"/merges/{merge_id}/publish", headers=BROWSER, data={
        "csrf_token": csrf, "name": "blend", "version": "1.0.0", "visibility": "public",
        "license_link": "https://example.org/terms"})
    assert response.status_code == 303 and response.headers["Location"] == "/alice/blend/v/1.0.0"
    adapter = client.get("/alice/blend/v/1.0.0", headers=BROWSER).get_data(as_text=True)
    assert "alice/a" in adapter and "alice/b" in adapter  # its parents
    listing = client.get("/merges", headers=BROWSER).get_data(as_text=True)
    assert merge_id[:12] in listing and "alice/blend@1.0.0" in listing
    # The same version again: the service's refusal, beside the version.
    response = client.post(f"/merges/{merge_id}/publish", headers=BROWSER, data={
        "csrf_token": csrf, "name": "blend", "version": "bad version!",
        "license_link": "https://example.org/terms"})
    assert response.status_code == 400


def test_cancel_a_queued_merge_from_its_page(accounts, app):
    app.extensions["lorastack"].queue.close()  # no worker: the merge stays queued
    client = app.test_client()
    csrf = sign_in(client, "alice")
    merge_id = submit(client, csrf, ("alice/a", "1.0", "1"), ("alice/b", "2.0", "1"))
    status = client.get(f"/merges/{merge_id}/status", headers=SCRIPT).get_json()
    assert status["status"] == "queued" and status["queue_position"] == 1
    page = client.get(f"/merges/{merge_id}", headers=BROWSER).get_data(as_text=True)
    assert 'id="cancel-merge"' in page and "number 1 in line" in page
    response = client.post(f"/merges/{merge_id}/cancel", headers=BROWSER,
                           data={"csrf_token": csrf})
    assert response.status_code == 303
    status = client.get(f"/merges/{merge_id}/status", headers=SCRIPT).get_json()
    assert status["status"] == "cancelled"
    assert status["error"]["code"] == "merge_cancelled"
    html = client.get(f"/merges/{merge_id}", headers=BROWSER).get_data(as_text=True)
    assert "Cancelled by its requester" in html and 'id="cancel-merge"' not in html


def test_another_users_merge_is_a_404_everywhere(app, accounts):
    alice = app.test_client()
    merge_id = submit(alice, sign_in(alice, "alice"), ("alice/a", "1.0", "1"))
    wait(alice, merge_id)
    bob = app.test_client()
    csrf = sign_in(bob, "bob")
    for path in (f"/merges/{merge_id}", f"/merges/{merge_id}/status",
                 f"/merges/{merge_id}/archive", f"/merges/{merge_id}/files/adapter_config.json"):
        assert bob.get(path, headers=BROWSER).status_code == 404, path
    assert bob.post(f"/merges/{merge_id}/cancel", headers=BROWSER,
                    data={"csrf_token": csrf}).status_code == 404
    response = bob.post(f"/merges/{merge_id}/publish", headers=BROWSER, data={
        "csrf_token": csrf, "name": "stolen", "version": "1.0"})
    assert response.status_code == 404
    assert merge_id[:12] not in bob.get("/merges", headers=BROWSER).get_data(as_text=True)


def test_posts_without_the_csrf_token_are_refused(client, accounts):
    csrf = sign_in(client, "alice")
    form = builder_form("", ("alice/a", "1.0", "1"), action="merge")
    del form["csrf_token"]
    assert client.post("/merge", headers=BROWSER, data=form).status_code == 403
    assert client.post("/merge/plan", headers=SCRIPT, data=form).status_code == 403
    assert client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": "forged"},
                       data=form).status_code == 403
    assert "No merges yet" in client.get("/merges", headers=BROWSER).get_data(as_text=True)
    merge_id = submit(client, csrf, ("alice/a", "1.0", "1"))
    assert client.post(f"/merges/{merge_id}/cancel", headers=BROWSER).status_code == 403


def test_nonsense_in_any_field_is_a_4xx_beside_it_never_a_500(client, accounts):
    csrf = sign_in(client, "alice")
    cases = [
        ({"adapter": ["a/b/c", ""], "version": ["", ""], "weight": ["1", "1"]}, "source-0"),
        ({"adapter": ["alice/a", ""], "version": ["9.9", ""], "weight": ["1", "1"]},
         "source-0"),
        ({"adapter": ["alice/a", ""], "version": ["1.0", ""], "weight": ["nan", "1"]},
         "source-0-weight"),
        ({"adapter": ["alice/a", ""], "version": ["1.0", ""], "weight": ["1", "1"],
          "rank": "1e999"}, "rank"),
        ({"adapter": ["alice/a", ""], "version": ["1.0", ""], "weight": ["1", "1"],
          "method": "dare_ties", "density": "nan"}, "density"),
        ({"adapter": ["alice/a", ""], "version": ["1.0", ""], "weight": ["1", "1"],
          "method": "blend"}, "method"),
    ]
    for fields, where in cases:
        for action in ("plan", "merge"):
            response = client.post("/merge", headers=BROWSER,
                                   data={"csrf_token": csrf, "action": action, **fields})
            assert 400 <= response.status_code < 500, (fields, action, response.status_code)
            assert field_error(response.get_data(as_text=True), where), (fields, action)
    for path in ("/merge/suggest?q=" + "x" * 300, "/merge/versions?adapter=nope",
                 "/merges/" + "z" * 40 + "/status", "/merge?add=@@@&add=a/b/c@1"):
        assert client.get(path, headers=SCRIPT).status_code < 500, path


def test_an_incompatible_source_gets_the_services_message_beside_it(client, accounts,
                                                                   tmp_path):
    import json

    from tests.support.adapters import save_lora

    wide = save_lora(tmp_path / "other-base", seed=3)
    config = json.loads((wide / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "another-model"
    (wide / "adapter_config.json").write_text(json.dumps(config))
    assert publish(client, accounts, "alice/other-base", "1", wide).status_code == 201
    csrf = sign_in(client, "alice")
    response = client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": csrf},
                           data=builder_form(csrf, ("alice/a", "1.0", 1),
                                             ("alice/other-base", "1", 1)))
    body = response.get_json()
    assert response.status_code == 422 and body["code"] == "incompatible_adapters"
    [(where, message)] = body["errors"].items()
    assert "another-model" in message and where == "source-1"
    # The suggestions for a second source leave out the other base model's adapters.
    base = client.get("/merge/versions?adapter=alice/a", headers=SCRIPT).get_json()["base_model"]
    offered = client.get("/merge/suggest", query_string={"q": "other base", "base_model": base},
                         headers=SCRIPT).get_json()["items"]
    assert "alice/other-base" not in [item["adapter"] for item in offered]
    assert "alice/other-base" in [item["adapter"] for item in client.get(
        "/merge/suggest", query_string={"q": "other base"}, headers=SCRIPT).get_json()["items"]]


def test_a_storage_outage_hides_its_cause_on_the_merge_pages(client, accounts, monkeypatch):
    from hub.errors import StorageUnavailable
    from hub.web import merge as merge_pages

    internal = "s3://internal-bucket at 10.1.2.3:9000"

    def unreachable(*_args, **_kwargs):
        raise StorageUnavailable(f"could not read a layout from {internal}: timed out")

    monkeypatch.setattr(merge_pages, "plan_merge", unreachable)
    csrf = sign_in(client, "alice")
    form = builder_form(csrf, ("alice/a", "1.0", "0.7"))
    script = client.post("/merge/plan", headers={**SCRIPT, "X-CSRF-Token": csrf}, data=form)
    assert script.status_code == 503 and script.mimetype == "application/problem+json"
    assert script.get_json()["code"] == "storage_unavailable"
    assert internal not in script.get_data(as_text=True)
    page = client.post("/merge", headers=BROWSER, data=form)
    assert page.status_code == 503 and internal not in page.get_data(as_text=True)
    assert "try again later" in page.get_data(as_text=True)
