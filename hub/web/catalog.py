"""The catalog, an adapter and its versions, an owner's adapters; and on an adapter's page,
its owner's changes (yank, unyank, description, tags, visibility) through the same services
as the API's PATCH and yank routes."""
from __future__ import annotations

import logging
from urllib.parse import quote, urlencode

from flask import flash, redirect, render_template, request, url_for

from hub.adapter_files import send_adapter_file
from hub.errors import HubError, InvalidName, NotFound, StorageUnavailable
from hub.licenses import list_licenses
from hub.runtime import current_hub
from hub.services import browse, catalog
from hub.services.access import may_change
from hub.services.names import VISIBILITIES, check_adapter_name, check_user_name, split_tags
from hub.services.shapes import adapter_summary, latest_version, version_view
from hub.web import bp, viewer
from hub.web.account import sign_in_redirect
from hub.web.markdown import card_html

#: The catalog's query parameters: the API's, so a page's URL and the API's agree.
FILTERS = ("search", "base_model", "license", "tag", "task")
PAGE_ARGS = (*FILTERS, "sort", "limit", "cursor")
SORT_LABELS = {"relevance": "Best match", "downloads": "Most downloaded", "created": "Newest",
               "updated": "Recently updated", "name": "Name"}
PAGE_SIZE = 20

log = logging.getLogger("hub.web")


def _page_args() -> tuple[dict[str, str], bool]:
    """The catalog arguments that are set, and whether the URL holds anything else (empty
    fields of a submitted form, parameters the page does not know): a page is then
    redirected to its clean URL, the one to bookmark and share."""
    kept = {key: request.args[key].strip() for key in PAGE_ARGS
            if request.args.get(key, "").strip()}
    clean = set(request.args) == set(kept) and all(
        request.args[key] == value for key, value in kept.items())
    return kept, clean


def _listing(endpoint: str, args: dict[str, str], **fixed: str):
    """One page of adapters for `args`, each with its rank, and the next page's URL."""
    query = catalog.parse_query({"limit": str(PAGE_SIZE), **args, **fixed})
    principal, hub = viewer(), current_hub()

    def page() -> tuple[list[dict], str | None, dict]:
        rows, next_cursor = catalog.search_adapters(session, principal, query)
        ranks = browse.latest_ranks(session, rows)
        cards = [{**adapter_summary(row), "rank": ranks.get(row.id)} for row in rows]
        return cards, next_cursor, browse.filter_choices(session)

    with hub.db.session() as session:
        cards, next_cursor, choices = hub.listings.get(session, principal, ("web", query.key),
                                                       page)
    next_url = (url_for(endpoint, **fixed, **{**args, "cursor": next_cursor})
                if next_cursor else None)
    return cards, next_url, choices


@bp.get("/")
def home():
    """The catalog: search, filters, sort and a keyset page of cards."""
    args, clean = _page_args()
    if not clean:
        return redirect(url_for("web.home", **args), code=302)
    cards, next_url, choices = _listing("web.home", args)
    first_url = url_for("web.home", **{k: v for k, v in args.items() if k != "cursor"})
    return render_template("catalog.html", cards=cards, args=args, next_url=next_url,
                           first_url=first_url if "cursor" in args else None,
                           choices=choices, licenses=list_licenses(), sorts=SORT_LABELS)


@bp.get("/<owner>")
def owner_page(owner: str):
    """An owner's adapters (their private ones only to themselves and admins)."""
    _check_names(owner)
    args, clean = _page_args()
    args = {key: value for key, value in args.items() if key in ("sort", "limit", "cursor")}
    if not clean or set(args) != set(request.args):
        return redirect(url_for("web.owner_page", owner=owner, **args), code=302)
    with current_hub().db.session() as session:
        if not browse.user_exists(session, owner):
            raise NotFound(f"No user {owner} on this hub.")
    cards, next_url, _ = _listing("web.owner_page", args, owner=owner)
    return render_template("owner.html", owner=owner, cards=cards, args=args,
                           next_url=next_url, sorts=SORT_LABELS)


@bp.get("/<owner>/<name>")
def adapter_page(owner: str, name: str):
    """An adapter: its card, files and config at its latest version."""
    return _adapter_view(owner, name, None)


@bp.get("/<owner>/<name>/v/<version>")
def version_page(owner: str, name: str, version: str):
    """An adapter at one version (a yanked one too, marked as such)."""
    return _adapter_view(owner, name, version)


def _adapter_view(owner: str, name: str, label: str | None, action_error: str | None = None):
    _check_names(owner, name)
    hub = current_hub()
    principal = viewer()
    with hub.db.session() as session:
        if label is None:
            adapter = catalog.get_adapter(session, principal, owner, name)
            # Every version yanked: the newest is still worth showing, marked as yanked.
            shown = latest_version(adapter) or (adapter.versions[0] if adapter.versions else None)
            if shown is None:  # created (by the HF protocol's create_repo), never published
                return render_template("adapter_empty.html", adapter=adapter_summary(adapter),
                                       can_change=may_change(principal, owner))
        else:
            adapter, shown = catalog.get_version(session, principal, owner, name, label)
        summary = adapter_summary(adapter)
        versions = [{"label": v.label, "created_at": v.created_at, "yanked": v.yanked,
                     "yank_reason": v.yank_reason} for v in adapter.versions]
        version = version_view(shown, adapter, principal)
        readme = browse.card_file(shown)
    card, card_missing = None, None
    if readme is not None:
        # Outside the session: a slow store must not hold a database connection.
        try:
            card = card_html(readme.sha256, lambda: browse.read_card(hub.store, readme))
        except (StorageUnavailable, NotFound):  # the store is down, or lost the blob
            log.warning("model card of %s/%s@%s unreadable", owner, name, version["version"],
                        exc_info=True)
            card_missing = "The model card cannot be read right now; the files below can."
    ref = f"{owner}/{name}@{version['version']}"
    return render_template(
        "adapter.html", adapter=summary, version=version, versions=versions, card=card,
        card_missing=card_missing,
        is_latest=label is None, ref=ref, action_error=action_error,
        can_change=may_change(principal, owner), visibilities=VISIBILITIES,
        files=[{**file, "url": _download_url(owner, name, version["version"], file["path"],
                                             summary["visibility"])}
               for file in version["files"]],
        merge_url="/merge?" + urlencode({"add": ref}))


@bp.post("/<owner>/<name>/v/<version>/yank")
def yank_version(owner: str, name: str, version: str):
    """Yank a version, with the reason typed (its owner or an admin)."""
    reason = request.form.get("reason", "").strip() or None
    return _change(owner, name, version, f"Yanked {version}: latest skips it.",
                   lambda session, principal: catalog.yank_version(
                       session, principal, owner, name, version, reason))


@bp.post("/<owner>/<name>/v/<version>/unyank")
def unyank_version(owner: str, name: str, version: str):
    """Undo a yank (its owner or an admin)."""
    return _change(owner, name, version, f"{version} is no longer yanked.",
                   lambda session, principal: catalog.unyank_version(
                       session, principal, owner, name, version))


@bp.post("/<owner>/<name>/edit")
def edit_adapter(owner: str, name: str):
    """Change the description, tags and visibility (its owner or an admin)."""
    changes = {"description": request.form.get("description", "").replace("\r\n", "\n"),
               "tags": split_tags(request.form.get("tags", "")),
               "visibility": request.form.get("visibility") or None}
    shown = request.form.get("version") or None
    return _change(owner, name, shown, "Saved.",
                   lambda session, principal: catalog.update_adapter(
                       session, principal, owner, name, changes))


def _change(owner: str, name: str, label: str | None, done: str, change):
    """Run an owner's change as the signed-in viewer, then back to the page it came from.

    Who may change what is the service's rule: an adapter the viewer cannot see is 404, one
    they cannot change 403 (error pages, as the API answers); a value the service refuses
    comes back on the page, beside the form.
    """
    _check_names(owner, name)
    back = (url_for("web.version_page", owner=owner, name=name, version=label) if label
            else url_for("web.adapter_page", owner=owner, name=name))
    principal = viewer()
    if principal is None:
        return sign_in_redirect(back)
    try:
        with current_hub().db.session() as session:
            change(session, principal)
    except HubError as error:
        if error.status in (401, 403, 404) or error.status >= 500:
            raise
        return _adapter_view(owner, name, label, action_error=error.detail), error.status
    flash(done)
    return redirect(back, code=303)


def _download_url(owner: str, name: str, label: str, path: str, visibility: str) -> str:
    if visibility == "private":
        # The API takes bearer tokens only; the page's own route takes the sign-in cookie.
        return url_for("web.adapter_file", owner=owner, name=name, version=label, path=path)
    # A public file from the API's URL: cacheable, and no response of it sets a cookie.
    parts = "/".join(quote(part, safe="") for part in (owner, name))
    return (f"/api/v1/adapters/{parts}/versions/{quote(label, safe='')}/files/"
            f"{quote(path, safe='/')}")


@bp.get("/<owner>/<name>/v/<version>/files/<path:path>")
def adapter_file(owner: str, name: str, version: str, path: str):
    """A file for the signed-in viewer (a private adapter's owner, say): the API's response,
    counted the same way; a GET changes nothing but the download count."""
    _check_names(owner, name)
    response = send_adapter_file(viewer(), owner, name, version, path)
    # The answer to a signed-in browser may refresh its sign-in cookie: never kept by a
    # shared cache, whatever the adapter's visibility (the API's own URL is the cacheable one).
    response.headers["Cache-Control"] = response.headers.get(
        "Cache-Control", "no-cache").replace("public", "private")
    return response


def _check_names(owner: str, name: str | None = None) -> None:
    """A URL whose parts cannot be names is a page that does not exist: 404, not 400."""
    try:
        check_user_name(owner)
        if name is not None:
            check_adapter_name(name)
    except InvalidName:
        raise NotFound("No such page: check the address, or search the catalog.") from None
