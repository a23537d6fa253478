"""A commit of the Hugging Face protocol as a lorastack version.

A commit changes some files of the adapter's latest version (`main`); the result is
published as a new, immutable version through publish_version, with every check the API
makes. What the commit does not say comes from the adapter:
- the version label is the README front matter's `version:` when the commit brings the
  README (one carried over from the previous version names that version, not this one),
  else the next free integer;
- the licence is the README front matter's `license:`, else the adapter's current one
  (PEFT's push_to_hub writes a card without one); a new adapter needs one;
- a commit whose files equal the latest version's publishes nothing and answers it.
Files are never deleted from a version: a commit that deletes is refused (yank instead).
"""
from __future__ import annotations

import shutil
import tempfile
from contextlib import ExitStack
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from hub.errors import InvalidName, InvalidRequest, NotFound, UnknownLicense, VersionExists
from hub.formats.readme import (DEFAULT_MAX_README_BYTES, ReadmeInfo, front_matter_scalar,
                                parse_readme)
from hub.models import Adapter, User, Version, utcnow
from hub.services.access import require_owner
from hub.services.accounts import Principal
from hub.services.names import (Metadata, check_adapter_name, check_adapter_name_free,
                                check_user_name)
from hub.services.publish import LicenseChoice, PublishResult, Upload, fingerprint, publish_version
from hub.services.shapes import latest_version
from hub.storage import BlobStore

IMMUTABLE = ("Versions are immutable: a commit cannot delete or rewrite files of a published"
             " version. To withdraw one, yank it (`lorastack yank owner/name@VERSION --reason"
             " ...` or POST /api/v1/adapters/{owner}/{name}/versions/{version}/yank); to"
             " change files, commit them and a new version is published.")


def create_adapter(session: Session, principal: Principal | None, owner: str, name: str,
                   private: bool) -> tuple[Adapter, bool]:
    """Create `owner/name` with no version yet (visibility as asked); (adapter, created).

    An existing adapter is returned as it is: its visibility is changed through the API.
    """
    check_user_name(owner)
    check_adapter_name(name)
    require_owner(principal, owner, session)
    owner_row = session.scalar(select(User).where(User.name == owner))
    if owner_row is None:
        raise NotFound(f"No user named {owner!r}.")
    adapter = _adapter_named(session, owner_row.id, name)
    if adapter is not None:
        return adapter, False
    check_adapter_name_free(session, owner_row.id, owner_row.name, name)
    now = utcnow()
    adapter = Adapter(owner=owner_row, name=name, visibility="private" if private else "public",
                      created_at=now, updated_at=now, downloads=0, description="")
    session.add(adapter)
    try:
        session.flush()
    except IntegrityError:
        # Another create_repo made it (or a look-alike) since the check above: answer what
        # it committed (the session holds nothing else of ours).
        session.rollback()
        owner_id = session.scalar(select(User.id).where(User.name == owner))
        adapter = _adapter_named(session, owner_id, name)
        if adapter is None:
            check_adapter_name_free(session, owner_id, owner, name)
            raise
        return adapter, False
    return adapter, True


def _adapter_named(session: Session, owner_id: int, name: str) -> Adapter | None:
    return session.scalar(select(Adapter).where(Adapter.owner_id == owner_id,
                                                Adapter.name == name))


def publish_commit(session: Session, store: BlobStore, principal: Principal | None,
                   owner: str, name: str, added: list[Upload], deleted: list[str],
                   tmp_dir: Path) -> PublishResult:
    """Publish the latest version's files changed by `added` as a new version."""
    check_user_name(owner)
    check_adapter_name(name)
    require_owner(principal, owner, session)
    if deleted:
        raise InvalidRequest(f"{IMMUTABLE} (The commit deletes {', '.join(sorted(deleted))}.)",
                             status=409)
    adapter = session.scalar(select(Adapter).join(User, Adapter.owner_id == User.id)
                             .where(User.name == owner, Adapter.name == name))
    base = latest_version(adapter) if adapter is not None else None
    with ExitStack() as cleanup:
        files = {upload.name: upload for upload in added}
        for file in (base.files if base is not None else []):
            if file.path not in files:  # only what the commit keeps is fetched
                files[file.path] = _carried(store, file, tmp_dir, cleanup)
        uploads = list(files.values())
        if base is not None and fingerprint(uploads) == base.fingerprint:
            return PublishResult(adapter, base, False)
        readme = _readme(files.get("README.md"))
        front = readme.front_matter if readme is not None else {}
        named = readme if any(upload.name == "README.md" for upload in added) else None
        label = _label(named, adapter)
        choice = _license(front, adapter, base, owner, name)
        try:
            return publish_version(session, store, principal, owner, name, label, uploads,
                                   choice, Metadata())
        except VersionExists as exc:
            if named is not None and named.front_matter.get("version") is not None:
                raise VersionExists(f"{exc.detail} Change `version:` in the README's front"
                                    " matter (or remove it: the next integer is used).") from None
            # The next integer was free when read: another commit published it since.
            raise VersionExists(f"{exc.detail} Another commit published version {label}"
                                " meanwhile; commit again for the next one.") from None


def _carried(store: BlobStore, file, tmp_dir: Path, cleanup: ExitStack) -> Upload:
    """A file of the base version, as an upload on disk (validation reads every file)."""
    local = store.local_path(file.blob_key)
    if local is None:
        temp = cleanup.enter_context(tempfile.NamedTemporaryFile(dir=tmp_dir, prefix="carry-"))
        with store.open_read(file.blob_key) as source:
            shutil.copyfileobj(source, temp, 1024 * 1024)
        temp.flush()
        local = Path(temp.name)
    return Upload(name=file.path, path=Path(local), size=file.size, sha256=file.sha256)


def _readme(readme: Upload | None) -> ReadmeInfo | None:
    if readme is None or readme.size > DEFAULT_MAX_README_BYTES:
        return None  # publish_version refuses a README too large, with its own message
    return parse_readme(Path(readme.path).read_bytes())


def _label(readme: ReadmeInfo | None, adapter: Adapter | None) -> str:
    """The front matter's `version:`, else the next integer after the adapter's largest."""
    given = readme.front_matter.get("version") if readme is not None else None
    if isinstance(given, (int, float)) and not isinstance(given, bool):
        # YAML reads a bare `1.10` as the float 1.1 and `012` as octal 10: the label is
        # the text the author wrote.
        given = front_matter_scalar(readme.text, "version")
    if isinstance(given, str) and given:
        return str(given)
    if given is not None:
        raise InvalidName("The README's `version:` must be a version label, like 1.0.0.")
    used = [int(v.label) for v in (adapter.versions if adapter else []) if v.label.isdigit()]
    return str(max(used, default=0) + 1)


def _license(front: dict, adapter: Adapter | None, base: Version | None, owner: str,
             name: str) -> LicenseChoice:
    """The README's licence (publish reads it), else the adapter's current one."""
    if front.get("license"):
        return LicenseChoice()
    if base is not None:
        return LicenseChoice(base.license, base.license_name, base.license_link)
    if adapter is not None and adapter.license:
        return LicenseChoice(adapter.license)
    raise UnknownLicense(f"{owner}/{name} has no licence yet: add one to the README's front"
                         " matter (for example `license: apache-2.0`; the ids are listed at"
                         " GET /api/v1/licenses; `other` also needs `license_name` and"
                         " `license_link`), or publish its first version with"
                         " `lorastack push --license`.")
