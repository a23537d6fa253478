"""The merge builder: choose sources, see their plan, queue the merge (hub.web.merges has
one's merges after that).

It calls the merge services the API's merge routes call (hub.services.merge_plan and
merges) with the signed-in user as the principal. The builder is one
form: posted, it re-renders with the plan ("Check plan") or queues the merge ("Merge");
the page's script posts the same form to /merge/plan as the sources change and shows the
plan it gets back, rendered by the same template as the form's.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from flask import g, jsonify, redirect, render_template, request, url_for

from hub.errors import HubError, InvalidMerge, InvalidRequest, NotFound, Unauthorized
from hub.merge.spec import DENSE_METHODS, METHODS
from hub.runtime import current_hub
from hub.services import catalog, merges
from hub.services.merge_plan import parse_merge_request, plan_merge, plan_view
from hub.services.names import split_adapter_id
from hub.web import bp, viewer
from hub.web.account import sign_in_redirect
from hub.web.errors import script_problem as problem, web_safe

METHOD_LABELS = {"linear": "Linear (weighted sum)", "ties": "TIES",
                 "dare_linear": "DARE linear", "dare_ties": "DARE TIES",
                 "magnitude_prune": "Magnitude prune"}
DEFAULT_DENSITY = "0.5"
SUGGESTIONS = 8
_SOURCE_INDEX = re.compile(r"sources\[(\d+)\]")
FORM = "form"  # the key of an error about the merge as a whole


@dataclass
class SourceRow:
    """One source as typed: owner/name, a version label (or latest) and a weight."""

    adapter: str = ""
    version: str = ""
    weight: str = "1"


@dataclass
class BuilderForm:
    """The builder's fields as typed, to show again with the plan or the errors."""

    sources: list[SourceRow] = field(default_factory=list)
    method: str = "linear"
    rank: str = ""
    density: str = DEFAULT_DENSITY

    @classmethod
    def from_values(cls, values) -> "BuilderForm":
        """The posted form: parallel lists adapter[], version[], weight[]."""
        rows = [SourceRow(a.strip(), v.strip(), w.strip()) for a, v, w in zip(
            values.getlist("adapter"), values.getlist("version"), values.getlist("weight"))]
        return cls(rows, values.get("method", "linear").strip() or "linear",
                   values.get("rank", "").strip(),
                   values.get("density", "").strip() or DEFAULT_DENSITY)

    @classmethod
    def preloaded(cls, refs: list[str]) -> "BuilderForm":
        """`?add=owner/name@version`, once per source."""
        rows = []
        for ref in refs:
            adapter, _, version = ref.strip().partition("@")
            if adapter:
                rows.append(SourceRow(adapter, version or "latest"))
        return cls(rows)

    def body(self) -> tuple[dict, dict[str, str]]:
        """The MergeSpec body for the services, and the errors of fields that are not
        numbers (the services say what else is wrong)."""
        errors: dict[str, str] = {}
        sources = []
        for index, row in enumerate(self.sources):
            if not row.adapter:
                continue  # the blank row a new source is typed into
            weight = _number(row.weight or "1", float)
            if weight is None or not math.isfinite(weight):
                errors[f"source-{index}-weight"] = "The weight must be a number, e.g. 0.7 or -0.5."
            sources.append({"adapter": row.adapter, "version": row.version or "latest",
                            "weight": weight if weight is not None else 1.0})
        body: dict = {"sources": sources, "method": self.method}
        if self.rank:
            rank = _number(self.rank, int)
            if rank is None:
                errors["rank"] = "The rank must be a whole number, or empty for the exact sum."
            body["rank"] = rank
        if self.method in DENSE_METHODS:
            density = _number(self.density, float)
            if density is None:
                errors["density"] = "The density must be a number in (0, 1], e.g. 0.5."
            body["density"] = density
        return body, errors

    def rows(self) -> list[SourceRow]:
        """The rows to show: the typed ones and a blank one to add a source in."""
        return [row for row in self.sources if row.adapter] + [SourceRow()]


def _number(text: str, kind):
    try:
        return kind(text)
    except (TypeError, ValueError, OverflowError):
        return None


# --- the builder --------------------------------------------------------------------------


@bp.route("/merge", methods=["GET", "POST"])
def merge_builder():
    """The builder: GET shows it (with `?add=` sources), POST checks the plan or merges."""
    if g.web_user is None:
        return sign_in_redirect()
    if request.method == "GET":
        form = BuilderForm.preloaded(request.args.getlist("add"))
        if not form.sources:
            return _builder(form, None, {})
        plan, errors = _plan(form)
        return _builder(form, plan, errors)
    form = BuilderForm.from_values(request.form)
    action = request.form.get("action", "plan")
    if action.startswith("remove:"):
        index = _number(action.partition(":")[2], int)
        if index is not None and 0 <= index < len(form.sources):
            del form.sources[index]
        action = "plan"
    form.sources = [row for row in form.sources if row.adapter]
    if action != "merge":
        plan, errors = _plan(form)
        return _builder(form, plan, errors), (_status_of(errors) if errors else 200)
    body, errors = form.body()
    if not errors:
        try:
            return redirect(url_for("web.merge_page", merge_id=_submit(body)), code=303)
        except HubError as error:
            errors = _placed(error, form)
    return _builder(form, None, errors), _status_of(errors)


@bp.post("/merge/plan")
def merge_plan_json():
    """The plan of the posted builder form, for the page's script: the plan and its HTML,
    or the errors by field (problem+json)."""
    if g.web_user is None:
        return problem(Unauthorized("Sign in to plan a merge."))
    form = BuilderForm.from_values(request.form)
    plan, errors = _plan(form)
    shown = _shown(errors)
    html = render_template("merge/_plan.html", plan=plan, errors=shown)
    if errors:
        first = HubError.by_code.get(errors.get("_code", ""), InvalidMerge)
        return problem(first(next(iter(shown.values())), status=_status_of(errors)),
                       errors=shown, html=html)
    return jsonify({"plan": plan, "errors": {}, "html": html})


@bp.get("/merge/suggest")
def merge_suggest():
    """Adapters the user may see whose name matches `q`; with `base_model`, only those."""
    if g.web_user is None:
        return problem(Unauthorized("Sign in to build a merge."))
    query = {"limit": str(SUGGESTIONS)}
    for key, arg in (("search", "q"), ("base_model", "base_model")):
        if request.args.get(arg, "").strip():
            query[key] = request.args[arg].strip()
    try:
        parsed = catalog.parse_query(query)
        with current_hub().db.session() as session:
            rows, _ = catalog.search_adapters(session, viewer(), parsed)
            items = [{"adapter": f"{row.owner.name}/{row.name}", "base_model": row.base_model,
                      "license": row.license, "latest_version": row.latest_label}
                     for row in rows]
    except HubError as error:
        return problem(error)
    return jsonify({"items": [item for item in items if item["latest_version"]]})


@bp.get("/merge/versions")
def merge_versions():
    """The versions of one adapter the user may see, newest first, yanked ones marked."""
    if g.web_user is None:
        return problem(Unauthorized("Sign in to build a merge."))
    parts = split_adapter_id(request.args.get("adapter", ""))
    if parts is None:
        return problem(InvalidRequest("'adapter' must be owner/name."))
    try:
        with current_hub().db.session() as session:
            adapter = catalog.get_adapter(session, viewer(), *parts)
            body = {"adapter": "/".join(parts), "base_model": adapter.base_model,
                    "versions": [{"version": v.label, "yanked": v.yanked}
                                 for v in adapter.versions]}
    except HubError as error:
        return problem(error)
    return jsonify(body)


def _plan(form: BuilderForm) -> tuple[dict | None, dict[str, str]]:
    """The plan service's answer for the form, or the errors placed by field."""
    body, errors = form.body()
    if errors:
        return None, errors
    if not body["sources"]:
        return None, {}
    hub = current_hub()
    try:
        request_ = parse_merge_request(body)
        with hub.db.session() as session:
            plan = plan_view(plan_merge(session, hub.store, hub.settings, viewer(), request_))
            plan["base_model"] = _base_models(session, form).get(0)
    except HubError as error:
        return None, _placed(error, form)
    return plan, {}


def _submit(body: dict) -> str:
    """Queue the merge as the API's POST /merges does; its id."""
    hub = current_hub()
    merge_request = parse_merge_request(body)
    with hub.db.session() as session:
        merge, created = merges.request_merge(session, hub.store, hub.settings, viewer(),
                                              merge_request)
        merge_id, status = merge.id, merge.status
    if created and status == "queued":
        hub.submit_merge(merge_id)
    return merge_id


def _placed(error: HubError, form: BuilderForm) -> dict[str, str]:
    """A service's refusal beside the field it concerns, else at the top of the form; with
    its status and code under the keys `_status` and `_code`."""
    error = web_safe(error)
    return {_field_of(error, form): error.detail, "_status": str(error.status),
            "_code": error.code}


def _field_of(error: HubError, form: BuilderForm) -> str:
    detail = error.detail
    typed = [i for i, row in enumerate(form.sources) if row.adapter]
    if error.code == "invalid_merge":
        match = _SOURCE_INDEX.search(detail)
        if match and int(match.group(1)) < len(typed):
            index = typed[int(match.group(1))]
            return f"source-{index}-weight" if ".weight" in detail else f"source-{index}"
        for name in ("rank", "density", "method"):
            if detail.startswith(name) or f" {name} " in detail or f"'{name}'" in detail:
                return name
    if error.code == "not_found":
        index = _unseen_source(form)
        if index is not None:
            return f"source-{index}"
    if error.code in ("incompatible_adapters", "license_forbids_merge"):
        named = [i for i in typed if f"{form.sources[i].adapter}@" in detail]
        if len(named) == 1:
            return f"source-{named[0]}"
        # "different base models" names the models: the first source unlike the first.
        with current_hub().db.session() as session:
            bases = _base_models(session, form)
        odd = [p for p, base in bases.items() if base != bases.get(0)]
        if odd:
            return f"source-{typed[odd[0]]}"
    return FORM


def _unseen_source(form: BuilderForm) -> int | None:
    """The first source the user cannot read (the plan's 404 names no field)."""
    with current_hub().db.session() as session:
        for index, row in enumerate(form.sources):
            parts = split_adapter_id(row.adapter) if row.adapter else None
            try:
                if parts is None:
                    raise NotFound("not an adapter id")
                catalog.get_version(session, viewer(), *parts, row.version or "latest")
            except HubError:
                if row.adapter:
                    return index
    return None


def _base_models(session, form: BuilderForm) -> dict[int, str]:
    """Each typed source's base model, by its position among the typed sources."""
    found = {}
    for position, row in enumerate(r for r in form.sources if r.adapter):
        parts = split_adapter_id(row.adapter)
        try:
            if parts is not None:
                found[position] = catalog.get_adapter(session, viewer(), *parts).base_model
        except HubError:
            pass
    return found


def _status_of(errors: dict[str, str]) -> int:
    return int(errors.get("_status", 400))


def _shown(errors: dict[str, str]) -> dict[str, str]:
    """The messages by field, without the status and code kept beside them."""
    return {key: value for key, value in errors.items() if not key.startswith("_")}


def _builder(form: BuilderForm, plan: dict | None, errors: dict[str, str]):
    errors = _shown(errors)
    with current_hub().db.session() as session:
        base_model = _base_models(session, form).get(0)
    return render_template("merge/builder.html", form=form, rows=form.rows(), plan=plan,
                           errors=errors, methods=[(m, METHOD_LABELS.get(m, m)) for m in METHODS],
                           dense_methods=DENSE_METHODS, base_model=base_model)
