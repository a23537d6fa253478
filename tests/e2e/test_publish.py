"""Publishing versions over HTTP: the happy path, immutability, auth and validation."""
from __future__ import annotations

import hashlib
import json
import threading

import pytest

from tests.e2e.helpers import assert_problem, publish


def stored_blobs(app) -> list[str]:
    return [key for key, _ in app.extensions["lorastack"].store.iter_blobs()]


def test_publish_creates_adapter_and_version_with_metadata(client, make_user, lora_dir):
    token = make_user("alice")
    response = publish(client, token, "alice/tiny", "1.0.0", lora_dir,
                       metadata={"description": "A tiny test adapter", "tags": ["chat", "test"],
                                 "task": "text-generation"})
    assert response.status_code == 201, response.get_json()
    version = response.get_json()
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    assert version["adapter"] == "alice/tiny" and version["version"] == "1.0.0"
    assert version["peft_type"] == "LORA" and version["r"] == 4 and version["lora_alpha"] == 8
    assert version["target_modules"] == ["q_proj", "v_proj"]
    assert version["base_model"] == config["base_model_name_or_path"]
    assert version["mergeable"] is True and version["yanked"] is False
    # 2 layers x 2 modules x (A: 4x64 + B: 64x4)
    assert version["num_parameters"] == 2 * 2 * (4 * 64 + 64 * 4)
    expected = {p.name: p.read_bytes() for p in lora_dir.iterdir()}
    assert {f["path"] for f in version["files"]} == set(expected)
    for file in version["files"]:
        assert file["size"] == len(expected[file["path"]])
        assert file["sha256"] == hashlib.sha256(expected[file["path"]]).hexdigest()
    assert version["size_bytes"] == sum(len(b) for b in expected.values())

    adapter = client.get("/api/v1/adapters/alice/tiny").get_json()
    assert adapter["id"] == "alice/tiny" and adapter["latest_version"] == "1.0.0"
    assert adapter["tags"] == ["chat", "test"] and adapter["task"] == "text-generation"
    assert adapter["description"] == "A tiny test adapter" and adapter["license"] == "apache-2.0"
    assert adapter["visibility"] == "public" and adapter["downloads"] == 0
    assert [v["version"] for v in adapter["versions"]] == ["1.0.0"]


def test_identical_resend_is_a_no_op_and_different_files_conflict(client, make_user, lora_dir,
                                                                  other_lora_dir):
    token = make_user("alice")
    first = publish(client, token, "alice/tiny", "1.0.0", lora_dir)
    assert first.status_code == 201
    again = publish(client, token, "alice/tiny", "1.0.0", lora_dir)
    assert again.status_code == 200
    assert again.get_json()["files"] == first.get_json()["files"]
    conflict = publish(client, token, "alice/tiny", "1.0.0", other_lora_dir)
    assert_problem(conflict, 409, "version_exists")
    versions = client.get("/api/v1/adapters/alice/tiny").get_json()["versions"]
    assert len(versions) == 1 and versions[0]["files"] == first.get_json()["files"]


def test_same_bytes_are_stored_once(app, client, make_user, lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/one", "1", lora_dir).status_code == 201
    count = len(stored_blobs(app))
    assert publish(client, token, "alice/two", "1", lora_dir).status_code == 201
    assert len(stored_blobs(app)) == count == 2


def test_concurrent_publishes_of_one_label_give_one_version(app, make_user, lora_dir,
                                                            other_lora_dir):
    token = make_user("alice")
    results = []
    barrier = threading.Barrier(2)

    def run(directory):
        with app.test_client() as own_client:
            barrier.wait()
            results.append(publish(own_client, token, "alice/race", "1.0", directory).status_code)

    threads = [threading.Thread(target=run, args=(d,)) for d in (lora_dir, other_lora_dir)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sorted(results) == [201, 409]
    detail = app.test_client().get("/api/v1/adapters/alice/race").get_json()
    assert len(detail["versions"]) == 1


def test_only_the_owner_or_an_admin_publishes(client, make_user, lora_dir):
    make_user("alice")
    bob = make_user("bob")
    reader = make_user("carol", scope="read")
    admin = make_user("root", admin=True)
    assert_problem(publish(client, None, "alice/tiny", "1", lora_dir), 401, "unauthorized")
    assert_problem(publish(client, "lst_wrong", "alice/tiny", "1", lora_dir), 401,
                   "unauthorized")
    assert_problem(publish(client, bob, "alice/tiny", "1", lora_dir), 403, "forbidden")
    assert_problem(publish(client, reader, "carol/tiny", "1", lora_dir), 403, "forbidden")
    assert publish(client, admin, "alice/tiny", "1", lora_dir).status_code == 201
    assert_problem(publish(client, admin, "nobody/tiny", "1", lora_dir), 404, "not_found")


@pytest.mark.parametrize("label, code", [("latest", "invalid_version"),
                                         ("-1", "invalid_version"),
                                         ("a" * 65, "invalid_version"),
                                         ("1.0/2", "invalid_version")])
def test_bad_version_labels_are_refused(client, make_user, lora_dir, label, code):
    token = make_user("alice")
    response = publish(client, token, "alice/tiny", label, lora_dir)
    if label == "1.0/2":
        # A slash cannot reach the label at all: the route does not match.
        assert response.status_code in (400, 404)
        return
    assert_problem(response, 400, code)


def test_bad_adapter_name_is_refused(client, make_user, lora_dir):
    token = make_user("alice")
    assert_problem(publish(client, token, "alice/-bad", "1", lora_dir), 400, "invalid_name")
    assert_problem(publish(client, token, "alice/a..b", "1", lora_dir), 400, "invalid_name")


def test_licence_must_be_known_and_other_needs_name_and_link(client, make_user, lora_dir):
    token = make_user("alice")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir, license="bogus-1.0"),
                   400, "unknown_license")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir, license=None),
                   400, "unknown_license")
    other = publish(client, token, "alice/tiny", "1", lora_dir, license="other")
    assert other.status_code == 400 and other.get_json()["code"] in ("unknown_license",
                                                                     "invalid_request")
    ok = publish(client, token, "alice/tiny", "1", lora_dir, license="other",
                 license_name="ACME licence", license_link="https://acme.example/licence")
    assert ok.status_code == 201
    assert ok.get_json()["license_name"] == "ACME licence"


def test_readme_front_matter_supplies_licence_tags_and_base_model(client, make_user, lora_dir):
    token = make_user("alice")
    readme = ("---\nlicense: mit\ntags:\n- poetry\nbase_model: meta-llama/Llama-3-8B\n---\n"
              "# My adapter\n").encode()
    response = publish(client, token, "alice/tiny", "1", lora_dir, license=None,
                       files={"README.md": readme})
    assert response.status_code == 201, response.get_json()
    adapter = client.get("/api/v1/adapters/alice/tiny").get_json()
    assert adapter["license"] == "mit" and adapter["tags"] == ["poetry"]
    body = client.get("/api/v1/adapters/alice/tiny/versions/1/files/README.md")
    if body.status_code == 302:  # the S3 store: follow the presigned URL over HTTP
        import requests

        assert requests.get(body.headers["Location"], timeout=30).content == readme
    else:
        assert body.data == readme


def test_pickle_files_are_refused_with_a_conversion_hint(app, client, make_user, lora_dir):
    token = make_user("alice")
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_model.bin": b"\x80\x04K\x01."})
    body = assert_problem(response, 415, "unsupported_format")
    assert "safetensors" in body["detail"]
    disguised = publish(client, token, "alice/tiny", "1", lora_dir,
                        files={"adapter_model.safetensors": b"\x80\x04\x95" + b"\0" * 64})
    assert_problem(disguised, 415, "unsupported_format")
    assert stored_blobs(app) == []


def test_unexpected_and_missing_files_are_refused(client, make_user, lora_dir):
    token = make_user("alice")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir,
                           files={"notes.txt": b"hello"}), 400, "unexpected_file")
    assert_problem(publish(client, token, "alice/tiny", "1", None,
                           files={"adapter_config.json":
                                  (lora_dir / "adapter_config.json").read_bytes()}),
                   400, "missing_file")


def test_corrupt_safetensors_leaves_nothing_behind(app, settings, client, make_user, lora_dir):
    token = make_user("alice")
    data = (lora_dir / "adapter_model.safetensors").read_bytes()
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_model.safetensors": data[:-10]})
    assert_problem(response, 422, "invalid_safetensors")
    assert_problem(client.get("/api/v1/adapters/alice/tiny"), 404, "not_found")
    assert stored_blobs(app) == []
    assert list((settings.data_dir / "tmp").iterdir()) == []


def test_nan_weights_are_refused(client, make_user, lora_dir):
    import torch
    from safetensors.torch import load_file, save

    token = make_user("alice")
    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name][0, 0] = float("nan")
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_model.safetensors": save(tensors)})
    body = assert_problem(response, 422, "non_finite_weights")
    assert torch.isnan(tensors[name]).any() and name.split(".lora_")[0] in body["detail"]


def test_config_that_disagrees_with_tensors_is_refused(client, make_user, lora_dir):
    token = make_user("alice")
    config = json.loads((lora_dir / "adapter_config.json").read_text())
    config["r"] = 16
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_config.json": json.dumps(config).encode()})
    assert_problem(response, 422, "tensor_mismatch")
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_config.json": b"[1, 2]"})
    assert_problem(response, 422, "invalid_adapter_config")


def test_bad_metadata_and_form_fields_are_refused(client, make_user, lora_dir):
    token = make_user("alice")
    response = publish(client, token, "alice/tiny", "1", lora_dir, metadata="{not json")
    assert_problem(response, 400, "invalid_request")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir,
                           metadata={"tags": "x" * 200}), 400, "invalid_request")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir,
                           metadata={"visibility": "secret"}), 400, "invalid_request")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir,
                           metadata={"colour": "blue"}), 400, "invalid_request")
    assert_problem(publish(client, token, "alice/tiny", "1", lora_dir, surprise="1"),
                   400, "invalid_request")


def test_upload_over_the_limit_gets_413(settings, make_user, lora_dir):
    from hub import create_app

    small = create_app(settings.with_overrides(max_upload_bytes=1000))
    token = make_user("alice")
    response = publish(small.test_client(), token, "alice/tiny", "1", lora_dir)
    assert_problem(response, 413, "file_too_large")
    small.extensions["lorastack"].close()


def test_visibility_is_set_when_the_adapter_is_created_only(client, make_user, lora_dir,
                                                            other_lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1", lora_dir)
    second = publish(client, token, "alice/tiny", "2", other_lora_dir,
                     metadata={"visibility": "private"})
    assert second.status_code == 201
    # Still public: visibility changes go through PATCH, never as a side effect of a publish.
    assert client.get("/api/v1/adapters/alice/tiny").get_json()["visibility"] == "public"


@pytest.mark.parametrize("second", [["sql", "code"], ["code", "sql"], ["sql", "rust"],
                                    ["sql", "sql", "code", "code"], []],
                         ids=["same", "reordered", "overlapping", "duplicated", "none"])
def test_a_new_version_may_repeat_reorder_or_overlap_the_tags(client, make_user, lora_dir,
                                                              second):
    token = make_user("alice")
    first = publish(client, token, "alice/tagged", "1.0.0", lora_dir,
                    metadata={"tags": ["sql", "code"]})
    assert first.status_code == 201, first.get_json()
    response = publish(client, token, "alice/tagged", "1.1.0", lora_dir,
                       metadata={"tags": second})
    assert response.status_code == 201, response.get_json()
    # Duplicates are folded (first one wins its place); an empty list keeps the old tags,
    # as metadata that is not sent does.
    expected = list(dict.fromkeys(second)) or ["sql", "code"]
    assert client.get("/api/v1/adapters/alice/tagged").get_json()["tags"] == expected


@pytest.mark.parametrize("tags", [["code", "sql"], ["sql", "math"], ["math"], ["sql", "sql"]],
                         ids=["reordered", "overlapping", "disjoint", "duplicated"])
def test_patch_may_repeat_reorder_or_overlap_the_tags(client, make_user, lora_dir, tags):
    token = make_user("alice")
    publish(client, token, "alice/tagged", "1.0.0", lora_dir, metadata={"tags": ["sql", "code"]})
    response = client.patch("/api/v1/adapters/alice/tagged", json={"tags": tags},
                            headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["tags"] == list(dict.fromkeys(tags))
    search = client.get("/api/v1/adapters", query_string={"tag": tags[0]}).get_json()
    assert [item["id"] for item in search["items"]] == ["alice/tagged"]


def test_publishing_under_an_unknown_owner_names_the_missing_user(client, make_user, lora_dir):
    token = make_user("alice")
    body = assert_problem(publish(client, token, "carol/tiny", "1.0", lora_dir), 404,
                          "not_found")
    assert "No user carol" in body["detail"] and "alice/" in body["detail"]
    make_user("bob")
    body = assert_problem(publish(client, token, "bob/tiny", "1.0", lora_dir), 403, "forbidden")
    assert "Only bob" in body["detail"]


def _renamed_keys(lora_dir, rename) -> bytes:
    from safetensors.torch import load_file, save

    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    return save({rename(key): value for key, value in tensors.items()}, metadata={"format": "pt"})


@pytest.mark.parametrize("rename, stray", [
    # PEFT loads this as an adapter with every LoRA weight missing, without an error.
    (lambda key: "weird." + key, "weird.base_model.model.model.layers.0.self_attn.q_proj"),
    # A module target_modules does not match: PEFT never builds a LoRA there.
    (lambda key: key.replace("v_proj", "k_proj"), "k_proj"),
])
def test_weights_peft_would_silently_ignore_are_refused_naming_the_key(app, client, make_user,
                                                                       lora_dir, rename, stray):
    token = make_user("alice")
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_model.safetensors": _renamed_keys(lora_dir, rename)})
    body = assert_problem(response, 422, "tensor_mismatch")
    assert stray in body["detail"] and "PEFT would ignore it" in body["detail"]
    assert_problem(client.get("/api/v1/adapters/alice/tiny"), 404, "not_found")
    assert stored_blobs(app) == []


def test_a_kohya_lora_is_told_what_is_accepted(client, make_user, lora_dir):
    from safetensors.torch import load_file, save

    token = make_user("alice")
    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    kohya = save({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight":
                  next(iter(tensors.values()))})
    for files, code in (({"my_style.safetensors": kohya}, "unexpected_file"),
                        ({"adapter_model.safetensors": kohya}, "missing_file")):
        body = assert_problem(publish(client, token, "alice/tiny", "1", None, files=files), 400, code)
        assert "kohya" in body["detail"] and "adapter_config.json" in body["detail"]
    response = publish(client, token, "alice/tiny", "1", lora_dir,
                       files={"adapter_model.safetensors": kohya})
    body = assert_problem(response, 422, "tensor_mismatch")
    assert "kohya" in body["detail"]


def test_a_variant_the_merge_engine_refuses_publishes_as_not_mergeable(client, make_user,
                                                                       tmp_path):
    from tests.support.adapters import save_lora

    token = make_user("alice")
    folder = save_lora(tmp_path / "bias_all", seed=3, bias="all")
    response = publish(client, token, "alice/biased", "1", folder)
    assert response.status_code == 201, response.get_json()
    assert response.get_json()["mergeable"] is False


def test_readme_tags_the_hub_cannot_keep_are_dropped_not_refused(client, make_user, lora_dir):
    token = make_user("alice")
    long_tag = "base_model:adapter:" + "unsloth/" + "x" * 60
    readme = ("---\nlicense: mit\ntags:\n- chat\n- " + long_tag + "\n- has space\n- chat\n---\n"
              "# An adapter\n")
    response = publish(client, token, "alice/carded", "1", lora_dir,
                       files={"README.md": readme.encode()})
    assert response.status_code == 201, response.get_json()
    assert client.get("/api/v1/adapters/alice/carded").get_json()["tags"] == ["chat"]
    # Tags the publisher sends are checked, never dropped.
    refused = publish(client, token, "alice/carded", "2", lora_dir,
                      metadata={"tags": ["has space"]})
    assert_problem(refused, 400, "invalid_request")


def test_a_nul_in_a_path_is_not_found_on_every_backend(client, make_user, lora_dir):
    token = make_user("alice")
    publish(client, token, "alice/tiny", "1.0", lora_dir)
    for url in ("/api/v1/adapters/alice/tiny/versions/1.0/files/a%00b",
                "/api/v1/adapters/al%00ice/tiny", "/api/v1/merges/ab%00cd"):
        assert_problem(client.get(url, headers={"Authorization": f"Bearer {token}"}), 404,
                       "not_found")


def test_look_alike_user_names_are_refused_naming_the_existing_user(app, make_user):
    from sqlalchemy.exc import IntegrityError

    from hub.errors import UserExists
    from hub.models import User
    from hub.services.accounts import create_user

    make_user("alice")
    db = app.extensions["lorastack"].db
    for look_alike in ("Alice", "AIice", "A1ice", "ALICE"):
        with pytest.raises(UserExists, match="looks like the existing user 'alice'"):
            with db.session() as session:
                create_user(session, look_alike)
    # The unique index holds even where the service check is bypassed.
    with pytest.raises(IntegrityError):
        with db.session() as session:
            session.add(User(name="aLice", is_admin=False))
            session.flush()
    with db.session() as session:
        assert create_user(session, "alicia").name == "alicia"


def test_look_alike_adapter_names_of_one_owner_are_refused_naming_the_existing_one(
        client, make_user, lora_dir):
    token = make_user("alice")
    assert publish(client, token, "alice/my-adapter", "1", lora_dir).status_code == 201
    for look_alike in ("My-Adapter", "my_adapter", "my.adapter", "MY--ADAPTER"):
        body = assert_problem(publish(client, token, f"alice/{look_alike}", "1", lora_dir),
                              400, "invalid_name")
        assert "alice/my-adapter" in body["detail"]
    assert publish(client, token, "alice/my-adapter", "2", lora_dir).status_code == 201
    # Another owner may use the same name.
    assert publish(client, make_user("bob"), "bob/My-Adapter", "1", lora_dir).status_code == 201
    names = [item["id"] for item in client.get("/api/v1/adapters?sort=name").get_json()["items"]]
    assert sorted(names) == ["alice/my-adapter", "bob/My-Adapter"]
