"""The licence table: Hugging Face licence ids with the permissions a merge must respect.

The flags answer four questions about an adapter under the licence:
`commercial_use` (may it be used commercially), `derivatives` (may others publish
modified or merged weights: `allowed`, only under the same licence `share-alike`, or
`forbidden`), `attribution` (must credit or licence notices travel with it), and
`use_restrictions` (does it carry use-based restrictions: an acceptable-use policy, RAIL
clauses, a user cap). They are a summary for the merge rules, not legal advice.
"""
from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Literal, Mapping
from urllib.parse import urlsplit

from hub.errors import InvalidRequest, UnknownLicense

Derivatives = Literal["allowed", "share-alike", "forbidden"]
OTHER = "other"


@dataclass(frozen=True)
class License:
    """One licence id and its permission flags."""

    id: str
    name: str
    url: str | None
    spdx: str | None
    commercial_use: bool
    derivatives: Derivatives
    attribution: bool
    use_restrictions: bool

    def to_dict(self) -> dict:
        """The API shape: id, name, url, spdx and the four flags."""
        return asdict(self)


A, SA, F = "allowed", "share-alike", "forbidden"

# id, name, url, spdx, commercial_use, derivatives, attribution, use_restrictions
_ROWS: list[tuple] = [
    # Permissive: keep the notice, otherwise do as you like.
    ("apache-2.0", "Apache License 2.0", "https://www.apache.org/licenses/LICENSE-2.0",
     "Apache-2.0", True, A, True, False),
    ("mit", "MIT License", "https://opensource.org/license/mit", "MIT", True, A, True, False),
    ("bsd-2-clause", 'BSD 2-Clause "Simplified" License',
     "https://opensource.org/license/bsd-2-clause", "BSD-2-Clause", True, A, True, False),
    ("bsd-3-clause", 'BSD 3-Clause "New" or "Revised" License',
     "https://opensource.org/license/bsd-3-clause", "BSD-3-Clause", True, A, True, False),
    ("bsd-3-clause-clear", "BSD 3-Clause Clear License",
     "https://spdx.org/licenses/BSD-3-Clause-Clear.html", "BSD-3-Clause-Clear",
     True, A, True, False),
    ("isc", "ISC License", "https://opensource.org/license/isc-license-txt", "ISC",
     True, A, True, False),
    ("zlib", "zlib License", "https://zlib.net/zlib_license.html", "Zlib", True, A, True, False),
    ("postgresql", "PostgreSQL License", "https://opensource.org/license/postgresql",
     "PostgreSQL", True, A, True, False),
    ("afl-3.0", "Academic Free License v3.0", "https://opensource.org/license/afl-3-0-php",
     "AFL-3.0", True, A, True, False),
    ("artistic-2.0", "Artistic License 2.0", "https://opensource.org/license/artistic-2-0",
     "Artistic-2.0", True, A, True, False),
    ("bsl-1.0", "Boost Software License 1.0", "https://www.boost.org/LICENSE_1_0.txt",
     "BSL-1.0", True, A, True, False),
    ("ecl-2.0", "Educational Community License v2.0", "https://opensource.org/license/ecl-2-0",
     "ECL-2.0", True, A, True, False),
    ("cdla-permissive-1.0", "Community Data License Agreement Permissive 1.0",
     "https://cdla.dev/permissive-1-0/", "CDLA-Permissive-1.0", True, A, True, False),
    ("cdla-permissive-2.0", "Community Data License Agreement Permissive 2.0",
     "https://cdla.dev/permissive-2-0/", "CDLA-Permissive-2.0", True, A, True, False),
    ("odc-by", "Open Data Commons Attribution License v1.0",
     "https://opendatacommons.org/licenses/by/1-0/", "ODC-By-1.0", True, A, True, False),
    # Public domain dedications: no conditions at all.
    ("cc0-1.0", "Creative Commons Zero v1.0 Universal",
     "https://creativecommons.org/publicdomain/zero/1.0/", "CC0-1.0", True, A, False, False),
    ("unlicense", "The Unlicense", "https://unlicense.org/", "Unlicense", True, A, False, False),
    ("wtfpl", "Do What The F*ck You Want To Public License", "http://www.wtfpl.net/", "WTFPL",
     True, A, False, False),
    ("pddl", "Open Data Commons Public Domain Dedication and License v1.0",
     "https://opendatacommons.org/licenses/pddl/1-0/", "PDDL-1.0", True, A, False, False),
    # Copyleft: modified weights must stay under the same licence.
    ("gpl-2.0", "GNU General Public License v2.0",
     "https://www.gnu.org/licenses/old-licenses/gpl-2.0.html", "GPL-2.0-only",
     True, SA, True, False),
    ("gpl-3.0", "GNU General Public License v3.0", "https://www.gnu.org/licenses/gpl-3.0.html",
     "GPL-3.0-only", True, SA, True, False),
    ("lgpl-2.1", "GNU Lesser General Public License v2.1",
     "https://www.gnu.org/licenses/old-licenses/lgpl-2.1.html", "LGPL-2.1-only",
     True, SA, True, False),
    ("lgpl-3.0", "GNU Lesser General Public License v3.0",
     "https://www.gnu.org/licenses/lgpl-3.0.html", "LGPL-3.0-only", True, SA, True, False),
    ("agpl-3.0", "GNU Affero General Public License v3.0",
     "https://www.gnu.org/licenses/agpl-3.0.html", "AGPL-3.0-only", True, SA, True, False),
    # File-level copyleft: the weights file is the covered file, so changes stay MPL/EPL.
    ("mpl-2.0", "Mozilla Public License 2.0", "https://www.mozilla.org/en-US/MPL/2.0/",
     "MPL-2.0", True, SA, True, False),
    ("epl-2.0", "Eclipse Public License 2.0", "https://www.eclipse.org/legal/epl-2.0/",
     "EPL-2.0", True, SA, True, False),
    ("eupl-1.1", "European Union Public License 1.1",
     "https://joinup.ec.europa.eu/collection/eupl/eupl-text-11-12", "EUPL-1.1",
     True, SA, True, False),
    ("osl-3.0", "Open Software License 3.0", "https://opensource.org/license/osl-3-0-php",
     "OSL-3.0", True, SA, True, False),
    ("cdla-sharing-1.0", "Community Data License Agreement Sharing 1.0",
     "https://cdla.dev/sharing-1-0/", "CDLA-Sharing-1.0", True, SA, True, False),
    ("odbl", "Open Database License v1.0", "https://opendatacommons.org/licenses/odbl/1-0/",
     "ODbL-1.0", True, SA, True, False),
    # Responsible-AI licences: derivatives allowed but must carry the use restrictions.
    ("openrail", "Open RAIL License", "https://huggingface.co/blog/open_rail", None,
     True, A, True, True),
    ("openrail++", "CreativeML Open RAIL++-M License",
     "https://huggingface.co/stabilityai/stable-diffusion-xl-base-1.0/blob/main/LICENSE.md",
     None, True, A, True, True),
    ("creativeml-openrail-m", "CreativeML Open RAIL-M License",
     "https://huggingface.co/spaces/CompVis/stable-diffusion-license", None,
     True, A, True, True),
    ("bigscience-openrail-m", "BigScience Open RAIL-M License",
     "https://bigscience.huggingface.co/blog/bigscience-openrail-m", None, True, A, True, True),
    ("bigscience-bloom-rail-1.0", "BigScience BLOOM RAIL License v1.0",
     "https://bigscience.huggingface.co/blog/the-bigscience-rail-license", None,
     True, A, True, True),
    ("bigcode-openrail-m", "BigCode Open RAIL-M License v1",
     "https://www.bigcode-project.org/docs/pages/bigcode-openrail/", None,
     True, A, True, True),
    # Model-vendor licences: commercial use allowed, with an acceptable-use policy and (for
    # Llama) a cap on monthly active users above which a separate licence is needed.
    ("llama2", "Llama 2 Community License Agreement", "https://ai.meta.com/llama/license/",
     None, True, A, True, True),
    ("llama3", "Meta Llama 3 Community License Agreement",
     "https://www.llama.com/llama3/license/", None, True, A, True, True),
    ("llama3.1", "Llama 3.1 Community License Agreement",
     "https://www.llama.com/llama3_1/license/", None, True, A, True, True),
    ("llama3.2", "Llama 3.2 Community License Agreement",
     "https://www.llama.com/llama3_2/license/", None, True, A, True, True),
    ("llama3.3", "Llama 3.3 Community License Agreement",
     "https://www.llama.com/llama3_3/license/", None, True, A, True, True),
    ("llama4", "Llama 4 Community License Agreement", "https://www.llama.com/llama4/license/",
     None, True, A, True, True),
    ("gemma", "Gemma Terms of Use", "https://ai.google.dev/gemma/terms", None,
     True, A, True, True),
    ("deepfloyd-if-license", "DeepFloyd IF License Agreement",
     "https://huggingface.co/spaces/DeepFloyd/deepfloyd-if-license", None,
     False, A, True, True),
    # Terms we cannot read: assume the restrictive side of every flag but derivatives
    # (refusing those would make every custom-licensed adapter unmergeable).
    (OTHER, "Other licence (see license_name and license_link)", None, None,
     False, A, True, True),
]


def _creative_commons() -> list[tuple]:
    # The CC variants Hugging Face lists; the flags follow from the variant's letters.
    variants = {"by": ("2.0", "2.5", "3.0", "4.0"), "by-sa": ("3.0", "4.0"),
                "by-nc": ("2.0", "3.0", "4.0"), "by-nd": ("4.0",),
                "by-nc-sa": ("2.0", "3.0", "4.0"), "by-nc-nd": ("3.0", "4.0")}
    words = {"by": "Attribution", "nc": "NonCommercial", "nd": "NoDerivatives",
             "sa": "ShareAlike"}
    scope = {"2.0": "Generic", "2.5": "Generic", "3.0": "Unported", "4.0": "International"}
    rows = []
    for variant, versions in variants.items():
        letters = variant.split("-")
        derivatives = F if "nd" in letters else SA if "sa" in letters else A
        for version in versions:
            title = "-".join(words[letter] for letter in letters)
            rows.append((f"cc-{variant}-{version}",
                         f"Creative Commons {title} {version} {scope[version]}",
                         f"https://creativecommons.org/licenses/{variant}/{version}/",
                         f"CC-{variant.upper()}-{version}",
                         "nc" not in letters, derivatives, True, False))
    return rows


# Creative Commons sits between the public-domain and the copyleft licences.
_SPLIT = next(i for i, row in enumerate(_ROWS) if row[0] == "gpl-2.0")
LICENSES: Mapping[str, License] = MappingProxyType(
    {row[0]: License(*row) for row in _ROWS[:_SPLIT] + _creative_commons() + _ROWS[_SPLIT:]})
# SPDX ids (any case) are accepted as aliases, so `Apache-2.0` means `apache-2.0`.
_ALIASES = {lic.spdx.lower(): lic.id for lic in LICENSES.values() if lic.spdx}
_SUGGESTED = ("apache-2.0", "mit", "cc-by-4.0", "cc-by-nc-4.0", "llama3.1", "gemma", OTHER)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def list_licenses() -> list[License]:
    """Every licence in the table, in display order."""
    return list(LICENSES.values())


def get_license(license_id: str) -> License:
    """The licence for an id (or its SPDX id, any case); UnknownLicense otherwise."""
    key = license_id.strip().lower() if isinstance(license_id, str) else ""
    found = LICENSES.get(key) or LICENSES.get(_ALIASES.get(key, ""))
    if found is not None:
        return found
    close = difflib.get_close_matches(key, list(LICENSES), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownLicense(
        f"unknown licence {license_id!r}: {hint}use an id such as "
        f"{', '.join(_SUGGESTED)} (the full list is at GET /api/v1/licenses); "
        f"with '{OTHER}', also give license_name and license_link")


def validate_license_fields(license_id: str, license_name: str | None = None,
                            license_link: str | None = None
                            ) -> tuple[License, str | None, str | None]:
    """Check a licence as sent by a publisher; returns (licence, name, link) normalized.

    `other` needs a name and an absolute http(s) link; the other ids take neither.
    """
    lic = get_license(license_id)
    name = (license_name or "").strip() or None
    link = (license_link or "").strip() or None
    if lic.id != OTHER:
        if name or link:
            raise InvalidRequest(f"license_name and license_link go with license '{OTHER}' "
                                 f"only; {lic.id} is {lic.name} ({lic.url})")
        return lic, None, None
    if not name or not link:
        missing = " and ".join(field for field, value in (("license_name", name),
                                                           ("license_link", link)) if not value)
        raise InvalidRequest(f"license '{OTHER}' needs {missing}: the licence's name and an "
                             f"http(s) URL where its text can be read")
    if len(name) > 200 or _CONTROL.search(name):
        raise InvalidRequest("license_name must be at most 200 characters, without control "
                             "characters")
    parts = urlsplit(link)
    if (len(link) > 1024 or parts.scheme not in ("http", "https") or not parts.netloc
            or _CONTROL.search(link) or " " in link):
        raise InvalidRequest(f"license_link must be an absolute http(s) URL to the licence "
                             f"text (at most 1024 characters), got {link[:100]!r}")
    return lic, name, link
