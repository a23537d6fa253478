"""What a licence permits, in plain words for a page: read from the licence table's flags."""
from __future__ import annotations

from dataclasses import dataclass

from hub.errors import UnknownLicense
from hub.licenses import OTHER, get_license


@dataclass(frozen=True)
class Permission:
    """One badge: a short label, a sentence for the adapter page, and its tone."""

    label: str
    sentence: str
    tone: str  # "yes" | "no" | "note"


def permissions(license_id: str | None) -> list[Permission]:
    """Commercial use, derivatives, attribution (and use restrictions) for `license_id`."""
    if not license_id:
        return [Permission("No licence", "No licence was given.", "no")]
    try:
        lic = get_license(license_id)
    except UnknownLicense:
        return [Permission("Unknown licence", f"{license_id} is not in the hub's licence table.",
                           "no")]
    if lic.id == OTHER:
        # The table's flags for `other` are the strictest reading, used to refuse merges it
        # might not allow; they are not what its terms say, so the page claims nothing.
        return [Permission("Custom licence", "The terms are in the licence's own text:"
                           " read it before use (commercial use, derivatives, attribution).",
                           "note")]
    found = [Permission("Commercial use", "Commercial use is allowed.", "yes")
                 if lic.commercial_use else
                 Permission("Non-commercial", "Commercial use is not allowed.", "no")]
    found.append({
        "allowed": Permission("Derivatives", "Modified or merged versions may be published.",
                              "yes"),
        "share-alike": Permission("Share-alike", "Modified or merged versions must use the"
                                  " same licence.", "note"),
        "forbidden": Permission("No derivatives", "Modified or merged versions may not be"
                                " published.", "no"),
    }[lic.derivatives])
    if lic.attribution:
        found.append(Permission("Attribution", "Credit and licence notices must travel with"
                                " it.", "note"))
    if lic.use_restrictions:
        found.append(Permission("Use restrictions", "The licence restricts some uses (an"
                                " acceptable-use policy or similar).", "note"))
    return found
