"""The provenance file `lorastack pull` leaves in a folder, and what merge-local reads from it.

`.lorastack.json` is hidden so that PEFT, `ls` and a later `push` pass it by (push sends
only the adapter files), and its name says which tool wrote it. It records where the
files came from and their sha256, so merge-local knows each source's licence offline,
and can tell when the folder no longer holds what was pulled.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from hub.errors import HubError, LicenseForbidsMerge
from hub.formats.names import ALLOWED_FILES
from hub.licenses import OTHER, DerivedLicense, SourceLicense, derive_license, get_license

PROVENANCE_FILE = ".lorastack.json"
FORMAT = "lorastack-provenance/1"
REPORT_FILE = "merge_report.json"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def provenance_record(version: dict, endpoint: str) -> dict:
    """The provenance of a pulled Version (the API's JSON) from the hub at `endpoint`."""
    record = {"format": FORMAT, "adapter": version["adapter"], "version": version["version"],
              "license": version.get("license")}
    if version.get("license") == OTHER:
        record["license_name"] = version.get("license_name")
        record["license_link"] = version.get("license_link")
    record.update({
        "endpoint": endpoint,
        "pulled_at": datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "files": {file["path"]: file["sha256"] for file in version["files"]},
    })
    return record


def write_provenance(folder: Path, record: dict) -> Path:
    """Write `record` as the folder's provenance file; returns its path."""
    path = folder / PROVENANCE_FILE
    path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path


def read_provenance(folder: Path) -> tuple[dict | None, str | None]:
    """(record, None) when the folder still holds what was pulled; else (None, why not) or (None, None)."""
    path = folder / PROVENANCE_FILE
    if not path.is_file():
        return None, None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return None, f"{path} is not readable JSON ({exc}): ignored"
    files = record.get("files") if isinstance(record, dict) else None
    if (not isinstance(files, dict) or not isinstance(record.get("adapter"), str)
            or not isinstance(record.get("version"), str)
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())):
        return None, f"{path} is not a lorastack provenance file: ignored"
    changed = _changed_files(folder, files)
    if changed:
        return None, (f"{folder} has changed since it was pulled as {record['adapter']}@"
                      f"{record['version']} ({', '.join(changed)}): its {PROVENANCE_FILE} is "
                      f"ignored, so its licence is not known from it")
    return record, None


def _changed_files(folder: Path, recorded: dict[str, str]) -> list[str]:
    """The adapter files that differ from, are missing from, or are absent in the record."""
    present = {name for name in ALLOWED_FILES if (folder / name).is_file()}
    changed = []
    for name in sorted(present | set(recorded)):
        if name not in ALLOWED_FILES:
            changed.append(f"{name} is not an adapter file")  # no path may leave the folder
        elif name not in present:
            changed.append(f"{name} is missing")
        elif name not in recorded:
            changed.append(f"{name} was added")
        elif sha256_file(folder / name) != recorded[name].lower():
            changed.append(f"{name} differs")
    return changed


@dataclass(frozen=True)
class SourceInfo:
    """What merge-local knows of one source folder's origin and licence."""

    folder: Path
    license_id: str | None = None
    license_name: str | None = None
    license_link: str | None = None
    #: The file the licence was read from: the provenance file or README.md.
    license_file: Path | None = None
    provenance: dict | None = None

    @property
    def label(self) -> str:
        """owner/name@version (folder) when pulled, else the folder."""
        if self.provenance is None:
            return str(self.folder)
        return f"{self.provenance['adapter']}@{self.provenance['version']} ({self.folder})"

    @property
    def known(self) -> bool:
        """Whether the licence is an id of the licence table."""
        if not self.license_id:
            return False
        try:
            get_license(self.license_id)
        except HubError:
            return False
        return True


def read_sources(folders: list[Path]) -> tuple[list[SourceInfo], list[str]]:
    """Each folder's origin and licence (provenance first, then README), and the warnings."""
    infos, warnings = [], []
    for folder in folders:
        record, warning = read_provenance(folder)
        if warning:
            warnings.append(warning)
        if record is not None and record.get("license"):
            infos.append(SourceInfo(folder, record["license"], record.get("license_name"),
                                    record.get("license_link"), folder / PROVENANCE_FILE, record))
            continue
        from hub.merge.sources import readme_license  # loads torch: only for a merge

        readme = readme_license(folder) if folder.is_dir() else None
        infos.append(SourceInfo(folder, readme, license_file=folder / "README.md" if readme else None,
                                provenance=record))
    return infos, warnings


def derive_merged_license(infos: list[SourceInfo]) -> DerivedLicense | None:
    """The merge's licence by the hub's rules, None when a source's licence is unknown.

    Raises LicenseForbidsMerge, as the hub would, for a source that forbids derivatives
    (there is no owner to exempt offline) or share-alike licences that cannot combine.
    """
    known = [info for info in infos if info.known]
    if not known:
        return None
    try:
        derived = derive_license([SourceLicense(i.license_id, i.license_name, i.license_link,
                                                source=i.label) for i in known])
    except LicenseForbidsMerge as error:
        raise LicenseForbidsMerge(f"{error.detail}; {_owner_hint(known)}") from None
    return derived if len(known) == len(infos) else None


def _owner_hint(known: list[SourceInfo]) -> str:
    forbidding = [i for i in known if get_license(i.license_id).derivatives == "forbidden"]
    files = ", ".join(str(i.license_file) for i in (forbidding or known))
    return (f"the licence is read from {files}: if you own the adapter, edit or remove "
            f"that file and merge again")


def describe_license(derived: DerivedLicense | None, infos: list[SourceInfo]) -> str:
    """One line naming the merge's licence, or which sources leave it unknown."""
    if derived is not None:
        name = derived.license_name if derived.id == OTHER else f"{derived.id}, {derived.license_name}"
        return f"licence of the result: {name} (derived from {', '.join(derived.sources)})"
    unknown = [i.label for i in infos if not i.known]
    return f"licence of the result: unknown (no known licence for {', '.join(unknown)})"


def annotate_report(out_dir: Path, infos: list[SourceInfo], derived: DerivedLicense | None) -> None:
    """Put each pulled source's adapter, version and licence, and the derived licence, in the report."""
    path = Path(out_dir) / REPORT_FILE
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    sources = report.get("sources")
    # The engine lists the sources in the order it was given them.
    if not isinstance(sources, list) or len(sources) != len(infos):
        return
    for entry, info in zip(sources, infos):
        if info.provenance is not None:
            entry.update(adapter=info.provenance["adapter"], version=info.provenance["version"])
        if info.license_file is not None and info.license_file.name == PROVENANCE_FILE:
            entry["license"] = info.license_id
            if info.license_id == OTHER:
                entry.update(license_name=info.license_name, license_link=info.license_link)
    report["licenses"] = sorted({s["license"] for s in sources if s.get("license")})
    report["license"] = derived.to_dict() if derived is not None else None
    staged = path.with_name(f".{REPORT_FILE}.tmp")
    staged.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    os.replace(staged, path)
