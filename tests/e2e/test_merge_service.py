"""The merge service over HTTP, with the inline worker: plan, merge, download, publish."""
from __future__ import annotations

import hashlib
import io
import json
import time
import warnings
import zipfile
from pathlib import Path

import pytest

from tests.e2e.helpers import assert_problem, auth, fetch, publish


def is_s3(settings) -> bool:
    return settings.storage_url.startswith("s3://")


def wait(client, token: str, merge_id: str, timeout: float = 120) -> dict:
    """Poll the merge until it ends."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/v1/merges/{merge_id}", headers=auth(token)).get_json()
        if body["status"] not in ("queued", "running"):
            return body
        time.sleep(0.2)
    raise AssertionError(f"merge {merge_id} did not end: {body}")


def spec(*sources, **params) -> dict:
    return {"sources": [{"adapter": a, "version": v, "weight": w} for a, v, w in sources],
            "method": "linear", **params}


@pytest.fixture
def two_adapters(client, make_user, lora_dir, other_lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/a", "1.0", lora_dir).status_code == 201
    assert publish(client, token, "alice/b", "2.0", other_lora_dir,
                   license="mit").status_code == 201
    return token


def dense_updates(folder: Path) -> dict:
    """Each module's s * B @ A in float64, from the adapter's own files."""
    import torch  # noqa: F401  (safetensors' torch loader)
    from safetensors.torch import load_file

    from hub.formats import module_scaling

    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for key, a in tensors.items():
        if key.endswith("lora_A.weight"):
            module = key[len("base_model.model."):-len(".lora_A.weight")]
            b = tensors[key.replace("lora_A", "lora_B")]
            out[module] = module_scaling(config, module) * (b.double() @ a.double())
    return out


def test_plan_resolves_latest_and_derives_the_licence(client, two_adapters):
    response = client.post("/api/v1/merges/plan", headers=auth(two_adapters),
                           json=spec(("alice/a", "latest", 0.7), ("alice/b", "2.0", 0.3),
                                     rank=8))
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert [(s["adapter"], s["version"], s["license"]) for s in body["sources"]] == [
        ("alice/a", "1.0", "apache-2.0"), ("alice/b", "2.0", "mit")]
    assert body["license"]["id"] == "other" and body["license"]["reasons"]
    # q_proj, k_proj, v_proj in 2 layers: the union of both adapters' modules.
    assert body["modules"] == 6
    # Rank 8 at most, and never more than the sources hold there: q 4 + 8, k 8, v 4.
    assert body["output_bytes"] == 2 * (8 + 8 + 4) * (64 + 64) * 4  # float32 sources


def test_plan_refuses_what_a_merge_would_refuse(client, make_user, two_adapters, tmp_path):
    from tests.support.adapters import save_lora

    token = two_adapters
    unknown = client.post("/api/v1/merges/plan", headers=auth(token),
                          json=spec(("alice/nope", "latest", 1)))
    assert_problem(unknown, 404, "not_found")
    assert_problem(client.post("/api/v1/merges/plan", headers=auth(token),
                               json=spec(("alice/a", "1.0", 1), method="ties")),
                   400, "invalid_merge")
    assert_problem(client.post("/api/v1/merges/plan", headers=auth(token),
                               json={"sources": []}), 400, "invalid_merge")
    assert_problem(client.post("/api/v1/merges/plan", headers=auth(token),
                               json={**spec(("alice/a", "1.0", 1)), "colour": "red"}),
                   400, "invalid_request")
    wide = save_lora(tmp_path / "wide", seed=3, r=4)
    config = json.loads((wide / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "another-model"
    (wide / "adapter_config.json").write_text(json.dumps(config))
    assert publish(client, token, "alice/other-base", "1", wide).status_code == 201
    body = assert_problem(client.post("/api/v1/merges/plan", headers=auth(token),
                                      json=spec(("alice/a", "1.0", 1),
                                                ("alice/other-base", "1", 1))),
                          422, "incompatible_adapters")
    assert "another-model" in body["detail"]
    # A private source another user cannot see is not found, as everywhere.
    publish(client, token, "alice/secret", "1", tmp_path / "wide",
            metadata={"visibility": "private"})
    bob = make_user("bob")
    assert_problem(client.post("/api/v1/merges/plan", headers=auth(bob),
                               json=spec(("alice/secret", "1", 1))), 404, "not_found")


def test_a_no_derivatives_source_is_refused_to_others_and_allowed_to_its_owner(
        client, make_user, lora_dir):
    alice = make_user("alice")
    bob = make_user("bob")
    publish(client, alice, "alice/nd", "1", lora_dir, license="cc-by-nd-4.0")
    body = {"sources": [{"adapter": "alice/nd", "version": "1", "weight": 1}]}
    refused = assert_problem(client.post("/api/v1/merges/plan", headers=auth(bob), json=body),
                             403, "license_forbids_merge")
    assert "alice/nd@1" in refused["detail"]
    assert client.post("/api/v1/merges/plan", headers=auth(alice), json=body).status_code == 200


def test_merge_end_to_end_downloads_an_adapter_peft_loads(settings, client, two_adapters,
                                                          lora_dir, other_lora_dir, tmp_path):
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file

    from hub.formats import module_scaling
    from tests.support.tiny_models import tiny_llama

    token = two_adapters
    response = client.post("/api/v1/merges", headers=auth(token),
                           json=spec(("alice/a", "1.0", 0.7), ("alice/b", "2.0", -0.3)))
    assert response.status_code == 202, response.get_json()
    queued = response.get_json()
    assert queued["status"] in ("queued", "running", "succeeded")
    done = wait(client, token, queued["id"])
    assert done["status"] == "succeeded", done
    assert done["device"] == "cpu" and done["progress"] == 1.0 and done["attempts"] == 1
    assert {f["path"] for f in done["files"]} == {
        "adapter_config.json", "adapter_model.safetensors", "README.md", "merge_report.json"}
    assert [s["label"] for s in done["report"]["sources"]] == ["alice/a@1.0", "alice/b@2.0"]
    assert "/tmp" not in json.dumps(done["report"]) and "source-0" not in json.dumps(done)
    assert [s["adapter"] for s in done["report"]["sources"]] == ["alice/a", "alice/b"]

    status, archive, headers = fetch(client, f"/api/v1/merges/{queued['id']}/archive", token)
    assert status == 200 and headers["Cache-Control"] == "private, no-store"
    assert hashlib.sha256(archive).hexdigest() == done["archive"]["sha256"]
    folder = tmp_path / "merged"
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        stored = {info.filename: info.compress_type for info in zf.infolist()}
        assert stored["adapter_model.safetensors"] == zipfile.ZIP_STORED
        zf.extractall(folder)
    for file in done["files"]:
        assert hashlib.sha256((folder / file["path"]).read_bytes()).hexdigest() == file["sha256"]

    a, b = dense_updates(lora_dir), dense_updates(other_lora_dir)
    truth = {m: 0.7 * a.get(m, 0) + -0.3 * b.get(m, 0) for m in set(a) | set(b)}
    base = tiny_llama(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = PeftModel.from_pretrained(base, str(folder)).eval()
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    config = json.loads((folder / "adapter_config.json").read_text())
    for module, update in truth.items():
        a_ = tensors[f"base_model.model.{module}.lora_A.weight"].double()
        b_ = tensors[f"base_model.model.{module}.lora_B.weight"].double()
        scale = module_scaling(config, module)
        assert torch.allclose(scale * b_ @ a_, update, rtol=1e-4, atol=1e-6), module
    # And PEFT's forward with the merged adapter equals the base plus the float64 sum.
    ids = torch.arange(12).reshape(1, 12)
    with torch.no_grad():
        got = model(ids).logits.double()
        reference = tiny_llama(0).double()
        for name, module in reference.named_modules():
            if name in truth:
                module.weight += truth[name]
        want = reference(ids).logits
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-4)

    card = (folder / "README.md").read_text()
    assert card.startswith("---\nbase_model: tiny-llama-64\nlibrary_name: peft\nlicense: other")
    assert "alice/a" in card and "alice/b" in card and "| 0.7 |" in card and "| -0.3 |" in card


def test_delta_output_is_the_weighted_sum(client, two_adapters, lora_dir, other_lora_dir):
    import torch
    from safetensors.torch import load

    token = two_adapters
    response = client.post("/api/v1/merges", headers=auth(token),
                           json=spec(("alice/a", "1.0", 1.5), ("alice/b", "2.0", 0.5),
                                     output="delta", dtype="float32"))
    done = wait(client, token, response.get_json()["id"])
    assert done["status"] == "succeeded", done
    status, data, _ = fetch(client, f"/api/v1/merges/{done['id']}/files/delta.safetensors",
                            token)
    assert status == 200
    delta = load(data)
    a, b = dense_updates(lora_dir), dense_updates(other_lora_dir)
    for module in set(a) | set(b):
        want = 1.5 * a.get(module, 0) + 0.5 * b.get(module, 0)
        assert torch.allclose(delta[f"{module}.weight"].double(), want, rtol=1e-5, atol=1e-7)


def test_the_same_spec_is_answered_from_the_cache(client, make_user, two_adapters):
    token = two_adapters
    body = spec(("alice/a", "1.0", 1), ("alice/b", "latest", 1), rank=4)
    first = client.post("/api/v1/merges", headers=auth(token), json=body).get_json()
    again = client.post("/api/v1/merges", headers=auth(token),
                        json=spec(("alice/a", "latest", 1.0), ("alice/b", "2.0", 1), rank=4))
    assert again.status_code == 200 and again.get_json()["id"] == first["id"]
    done = wait(client, token, first["id"])
    # Another user's identical request reuses the result: done at once, the same bytes.
    bob = make_user("bob")
    other = client.post("/api/v1/merges", headers=auth(bob), json=body)
    assert other.status_code == 202
    copy = other.get_json()
    assert copy["id"] != first["id"] and copy["status"] == "succeeded"
    assert copy["files"] == done["files"]
    # Only the requester (and admins) see a merge.
    assert_problem(client.get(f"/api/v1/merges/{first['id']}", headers=auth(bob)), 404,
                   "not_found")
    listed = client.get("/api/v1/merges", headers=auth(token)).get_json()
    assert [item["id"] for item in listed["items"]] == [first["id"]]


def test_publish_a_merge_sets_parents_children_and_the_derived_licence(client, two_adapters):
    token = two_adapters
    merge = client.post("/api/v1/merges", headers=auth(token),
                        json=spec(("alice/a", "1.0", 0.5), ("alice/b", "2.0", 0.5), rank=4))
    done = wait(client, token, merge.get_json()["id"])
    missing_link = client.post(f"/api/v1/merges/{done['id']}/publish", headers=auth(token),
                               json={"adapter": "alice/mix", "version": "1.0"})
    assert_problem(missing_link, 400, "invalid_request")
    published = client.post(f"/api/v1/merges/{done['id']}/publish", headers=auth(token),
                            json={"adapter": "alice/mix", "version": "1.0",
                                  "license_link": "https://example.com/terms"})
    assert published.status_code == 201, published.get_json()
    version = published.get_json()
    assert version["license"] == "other" and version["mergeable"] is True
    assert version["parents"] == [{"adapter": "alice/a", "version": "1.0", "weight": 0.5},
                                  {"adapter": "alice/b", "version": "2.0", "weight": 0.5}]
    parent = client.get("/api/v1/adapters/alice/a/versions/1.0").get_json()
    assert parent["children"] == [{"adapter": "alice/mix", "version": "1.0"}]
    shown = client.get(f"/api/v1/merges/{done['id']}", headers=auth(token)).get_json()
    assert shown["published"] == {"adapter": "alice/mix", "version": "1.0"}
    assert shown["expires_at"] is None


def test_cancel_a_queued_merge_and_the_active_limit(app, client, settings, two_adapters):
    hub = app.extensions["lorastack"]
    hub.queue.close()  # no worker: merges stay queued
    token = two_adapters
    ids = []
    for rank in range(1, settings.max_active_merges + 1):
        response = client.post("/api/v1/merges", headers=auth(token),
                               json=spec(("alice/a", "1.0", 1), rank=rank))
        assert response.status_code == 202
        ids.append(response.get_json()["id"])
    limited = client.post("/api/v1/merges", headers=auth(token),
                          json=spec(("alice/a", "1.0", 1), rank=99))
    assert_problem(limited, 429, "rate_limited")
    assert int(limited.headers["Retry-After"]) > 0
    # Oldest first: each queued merge knows its place in line.
    assert [client.get(f"/api/v1/merges/{merge_id}", headers=auth(token)).get_json()[
        "queue_position"] for merge_id in ids] == list(range(1, len(ids) + 1))
    cancelled = client.delete(f"/api/v1/merges/{ids[0]}", headers=auth(token)).get_json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["error"]["code"] == "merge_cancelled"
    assert_problem(client.get(f"/api/v1/merges/{ids[0]}/archive", headers=auth(token)),
                   404, "not_found")
    again = client.post("/api/v1/merges", headers=auth(token),
                        json=spec(("alice/a", "1.0", 1), rank=99))
    assert again.status_code == 202


def test_a_source_the_engine_would_refuse_is_refused_by_the_plan_with_its_reason(
        client, make_user, tmp_path):
    from tests.support.adapters import save_lora

    token = make_user("alice")
    biased = save_lora(tmp_path / "biased", seed=5, bias="all")
    version = publish(client, token, "alice/biased", "1", biased).get_json()
    assert version["mergeable"] is False and "bias" in version["not_mergeable_reason"]
    body = assert_problem(client.post("/api/v1/merges/plan", headers=auth(token),
                                      json=spec(("alice/biased", "1", 1))),
                          422, "incompatible_adapters")
    assert "alice/biased@1 cannot be merged" in body["detail"] and "bias" in body["detail"]


def test_plan_analysis_shows_how_the_sources_pull_together(client, two_adapters):
    token = two_adapters
    body = spec(("alice/a", "1.0", 1.0), ("alice/a", "1.0", -1.0), ("alice/b", "2.0", 0.5))
    assert_problem(client.post("/api/v1/merges/plan", json={**body, "analyze": True}),
                   401, "unauthorized")
    response = client.post("/api/v1/merges/plan", headers=auth(token),
                           json={**body, "analyze": True})
    assert response.status_code == 200, response.get_json()
    analysis = response.get_json()["analysis"]
    assert [s["label"] for s in analysis["sources"]] == ["alice/a@1.0", "alice/a@1.0",
                                                         "alice/b@2.0"]
    # An adapter against its own negation: exactly opposed, and said so.
    assert analysis["cosine"][0][1] == pytest.approx(-1.0)
    assert analysis["summary"]["opposed"]
    # Norms are of the weighted updates: a and -a cancel, what is left is 0.5 b.
    assert analysis["summary"]["merged_norm"] == pytest.approx(
        analysis["sources"][2]["norm"], rel=1e-6)


def test_the_cache_is_shared_only_between_merges_of_the_same_versions(client, make_user,
                                                                      lora_dir):
    alice = make_user("alice")
    publish(client, alice, "alice/a", "1", lora_dir)
    publish(client, alice, "alice/copy", "1", lora_dir, license="mit")  # the same bytes
    first = wait(client, alice, client.post("/api/v1/merges", headers=auth(alice), json=spec(
        ("alice/a", "1", 1), rank=2)).get_json()["id"])
    bob = make_user("bob")
    other = client.post("/api/v1/merges", headers=auth(bob),
                        json=spec(("alice/copy", "1", 1), rank=2)).get_json()
    # Another version (another name, another licence) is another model card: not a copy.
    done = wait(client, bob, other["id"])
    assert done["attempts"] == 1 and done["status"] == "succeeded"
    card = fetch(client, f"/api/v1/merges/{done['id']}/files/README.md", bob)[1].decode()
    assert "alice/copy" in card and "alice/a " not in card and first["id"] not in card


def test_bad_merge_input_is_a_clear_400_never_a_500(client, make_user, two_adapters):
    token = two_adapters
    for body, code in ((spec(("alice/a", "1.0", 10**400)), "invalid_merge"),
                       (spec(("alice/a", "1.0", "1")), "invalid_merge"),
                       (spec(("alice/a", "1.0", 1), method="ties", density=10**400),
                        "invalid_merge"),
                       (spec(("alice/a", "1.0", 1), seed=2**64), "invalid_merge"),
                       (spec(("alice/a", "1.0", 1), rank="4"), "invalid_merge"),
                       ({"sources": "alice/a"}, "invalid_merge"),
                       ([1, 2], "invalid_request")):
        assert_problem(client.post("/api/v1/merges", headers=auth(token), json=body), 400, code)
    deep = __import__("base64").urlsafe_b64encode(b"[" * 5000).decode()
    assert_problem(client.get("/api/v1/merges", headers=auth(token),
                              query_string={"cursor": deep}), 400, "invalid_request")
    assert_problem(client.get("/api/v1/adapters", query_string={"cursor": deep}), 400,
                   "invalid_request")
    reader = make_user("alice", scope="read")
    merge = client.post("/api/v1/merges", headers=auth(token),
                        json=spec(("alice/a", "1.0", 1), rank=3)).get_json()
    assert_problem(client.delete(f"/api/v1/merges/{merge['id']}", headers=auth(reader)), 403,
                   "forbidden")
    assert_problem(client.post("/api/v1/merges/plan", headers=auth(reader),
                               json={**spec(("alice/a", "1.0", 1)), "analyze": True}),
                   403, "forbidden")
    done = wait(client, token, merge["id"])
    for publish_body in ({"adapter": "alice/m", "version": "1", "visibility": "Public"},
                         {"adapter": "alice/m", "version": "1", "description": 5},
                         {"adapter": "alice/m", "version": "1", "colour": "red"},
                         {"adapter": "alice", "version": "1"}):
        assert_problem(client.post(f"/api/v1/merges/{done['id']}/publish", headers=auth(token),
                                   json=publish_body), 400, "invalid_request")


def test_a_merge_of_a_private_adapter_publishes_private_and_lineage_hides_it(
        client, make_user, lora_dir, other_lora_dir):
    alice = make_user("alice")
    publish(client, alice, "alice/secret", "1", lora_dir, metadata={"visibility": "private"})
    publish(client, alice, "alice/open", "1", other_lora_dir)
    done = wait(client, alice, client.post("/api/v1/merges", headers=auth(alice), json=spec(
        ("alice/secret", "1", 1), ("alice/open", "1", 1), rank=4)).get_json()["id"])
    first = client.post(f"/api/v1/merges/{done['id']}/publish", headers=auth(alice),
                        json={"adapter": "alice/mix", "version": "1"})
    assert first.status_code == 201, first.get_json()
    assert client.get("/api/v1/adapters/alice/mix").status_code == 404  # private by default
    shown = client.post(f"/api/v1/merges/{done['id']}/publish", headers=auth(alice),
                        json={"adapter": "alice/mix-public", "version": "1",
                              "visibility": "public"})
    assert shown.status_code == 201, shown.get_json()
    seen = client.get("/api/v1/adapters/alice/mix-public/versions/1").get_json()
    assert seen["parents"] == [{"adapter": "alice/open", "version": "1", "weight": 1.0}]
    own = client.get("/api/v1/adapters/alice/mix-public/versions/1", headers=auth(alice))
    assert len(own.get_json()["parents"]) == 2
