"""The licence of a merged adapter: the most restrictive combination of its sources'."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from hub.errors import InvalidMerge, LicenseForbidsMerge
from hub.licenses.table import OTHER, Derivatives, License, get_license

_STRICTNESS = {"allowed": 0, "share-alike": 1, "forbidden": 2}


@dataclass(frozen=True)
class SourceLicense:
    """The licence of one merge source, and whether the requester owns that source."""

    license_id: str
    license_name: str | None = None
    license_link: str | None = None
    requester_owns: bool = False
    # "owner/name@version", named when this source makes the merge refused.
    source: str | None = None


@dataclass(frozen=True)
class DerivedLicense:
    """The licence a merged adapter carries, with the ids of the licences it came from."""

    id: str
    license_name: str
    license_link: str | None
    spdx: str | None
    commercial_use: bool
    derivatives: Derivatives
    attribution: bool
    use_restrictions: bool
    sources: tuple[str, ...]

    def to_dict(self) -> dict:
        """The API shape of a merge's `license`."""
        return {"id": self.id, "license_name": self.license_name,
                "license_link": self.license_link, "spdx": self.spdx,
                "commercial_use": self.commercial_use, "derivatives": self.derivatives,
                "attribution": self.attribution, "use_restrictions": self.use_restrictions,
                "sources": list(self.sources)}


@dataclass(frozen=True)
class _Resolved:
    given: SourceLicense
    license: License
    label: str  # the licence as a person reads it: its id, or the name of an `other`

    @property
    def identity(self) -> tuple:
        # Two `other` licences are the same licence only with the same name and link.
        if self.license.id == OTHER:
            return (OTHER, self.given.license_name, self.given.license_link)
        return (self.license.id,)

    def describe(self, index: int) -> str:
        who = self.given.source or f"source {index + 1}"
        return f"{who} ({self.label})"


def derive_license(sources: Sequence[SourceLicense]) -> DerivedLicense:
    """The merged adapter's licence, or LicenseForbidsMerge when the sources cannot combine.

    Flags take the restrictive side (commercial use only if all allow it; attribution and
    use restrictions if any has them). A source that forbids derivatives is refused unless
    the requester owns it; two different share-alike licences are refused; one share-alike
    licence becomes the result's, and must be able to carry every other source's terms.
    """
    if not sources:
        raise InvalidMerge("a merge needs at least one source to derive its licence from")
    resolved = []
    for given in sources:
        lic = get_license(given.license_id)
        label = (given.license_name or OTHER) if lic.id == OTHER else lic.id
        resolved.append(_Resolved(given, lic, label))

    for index, item in enumerate(resolved):
        if item.license.derivatives == "forbidden" and not item.given.requester_owns:
            raise LicenseForbidsMerge(
                f"{item.describe(index)} is under {item.license.name}, which forbids "
                f"derivative works: only its owner can merge it")

    share_alike: dict[tuple, tuple[int, _Resolved]] = {}
    for index, item in enumerate(resolved):
        if item.license.derivatives == "share-alike":
            share_alike.setdefault(item.identity, (index, item))
    if len(share_alike) > 1:
        (i, first), (j, second) = list(share_alike.values())[:2]
        raise LicenseForbidsMerge(
            f"{first.describe(i)} and {second.describe(j)} are under different share-alike "
            f"licences; each requires the merge to be released under it alone")

    commercial_use = all(item.license.commercial_use for item in resolved)
    attribution = any(item.license.attribution for item in resolved)
    use_restrictions = any(item.license.use_restrictions for item in resolved)
    derivatives: Derivatives = max((item.license.derivatives for item in resolved),
                                   key=_STRICTNESS.__getitem__)
    ids = tuple(item.license.id for item in resolved)

    if share_alike:
        _, chosen = next(iter(share_alike.values()))
        _check_share_alike_carries(chosen.license, resolved)
        return _single(chosen, ids)

    identities = {item.identity for item in resolved}
    if len(identities) == 1:
        return _single(resolved[0], ids)
    labels = list(dict.fromkeys(item.label for item in resolved))
    return DerivedLicense(
        id=OTHER, license_name=f"Combination of {', '.join(labels)}", license_link=None,
        spdx=None, commercial_use=commercial_use, derivatives=derivatives,
        attribution=attribution, use_restrictions=use_restrictions, sources=ids)


def _single(item: _Resolved, ids: tuple[str, ...]) -> DerivedLicense:
    lic = item.license
    if lic.id == OTHER:
        name, link = item.given.license_name or OTHER, item.given.license_link
    else:
        name, link = lic.name, lic.url
    return DerivedLicense(id=lic.id, license_name=name, license_link=link, spdx=lic.spdx,
                          commercial_use=lic.commercial_use, derivatives=lic.derivatives,
                          attribution=lic.attribution, use_restrictions=lic.use_restrictions,
                          sources=ids)


def _check_share_alike_carries(chosen: License, resolved: list[_Resolved]) -> None:
    # A share-alike licence forbids adding terms: the merge must be releasable under it
    # unchanged, so a source that needs a stricter term than it grants cannot join.
    for index, item in enumerate(resolved):
        other = item.license
        conflicts = []
        if chosen.commercial_use and not other.commercial_use:
            conflicts.append("forbids commercial use")
        if not chosen.use_restrictions and other.use_restrictions:
            conflicts.append("adds use restrictions")
        if _STRICTNESS[other.derivatives] > _STRICTNESS[chosen.derivatives]:
            conflicts.append("forbids derivative works")
        if not chosen.attribution and other.attribution:
            conflicts.append("requires attribution")
        if conflicts:
            raise LicenseForbidsMerge(
                f"the merge would have to be released under {chosen.id} (share-alike), "
                f"but {item.describe(index)} {' and '.join(conflicts)}, which {chosen.id} "
                f"does not allow")
