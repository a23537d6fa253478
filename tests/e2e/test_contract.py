"""The contract in the repository: the OpenAPI document matches the routes, and every error
code the code can raise is listed in docs/api.md."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHODS = {"get", "post", "put", "patch", "delete"}


def api_routes(app) -> set[tuple[str, str]]:
    """(OpenAPI path, method) of every /api/v1 route of the app."""
    routes = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/"):
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule[len("/api/v1"):])
        routes |= {(path, method.lower()) for method in rule.methods
                   if method.lower() in METHODS}
    return routes


def test_openapi_document_is_valid_and_lists_exactly_the_routes(app, client):
    from openapi_spec_validator import validate

    response = client.get("/api/v1/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    document = response.get_json()
    validate(document)
    assert document["openapi"].startswith("3.1")
    documented = {(path, method) for path, item in document["paths"].items()
                  for method in item if method in METHODS}
    assert documented == api_routes(app)


def test_openapi_error_codes_are_the_hub_errors(client):
    from hub.errors import HubError

    problem = client.get("/api/v1/openapi.json").get_json()["components"]["schemas"]["Problem"]
    assert set(problem["properties"]["code"]["enum"]) == set(HubError.by_code)


def documented_codes(text: str) -> set[str]:
    section = text[text.index("Codes:"):text.index("Add a code here")]
    return set(re.findall(r"`([a-z_]+)`", section))


def raised_error_classes() -> set[str]:
    """Names of the HubError subclasses that code under hub/ raises or instantiates."""
    from hub.errors import HubError

    names = {cls.__name__ for cls in HubError.by_code.values()}
    used = set()
    for path in (ROOT / "hub").rglob("*.py"):
        used |= set(re.findall(r"\b(" + "|".join(names) + r")\(", path.read_text()))
    return used


def test_every_error_code_the_code_raises_is_documented():
    from hub.errors import HubError

    documented = documented_codes((ROOT / "docs" / "api.md").read_text())
    raised = {cls.code for cls in HubError.by_code.values()
              if cls.__name__ in raised_error_classes()}
    missing = sorted(raised - documented)
    assert not missing, f"codes raised but not listed in docs/api.md: {missing}"
    unknown = sorted(documented - set(HubError.by_code))
    assert not unknown, f"codes listed in docs/api.md that no HubError has: {unknown}"


def test_the_shared_contract_codes_are_all_kept():
    shared = ROOT.parent / "shared" / "API.md"
    if not shared.exists():
        pytest.skip("../shared/API.md is not beside this checkout")
    ours = documented_codes((ROOT / "docs" / "api.md").read_text())
    dropped = sorted(documented_codes(shared.read_text()) - ours)
    assert not dropped, f"docs/api.md drops codes of the shared contract: {dropped}"


def test_no_error_is_made_with_a_code_override():
    # One class per code: a `code=` argument would raise a code no class declares.
    offenders = [str(path.relative_to(ROOT)) for path in (ROOT / "hub").rglob("*.py")
                 if re.search(r"Error\([^)]*\bcode=", path.read_text(), re.S)]
    assert not offenders
