"""The README.md of a merge: Hub-style YAML front matter, then provenance in plain words."""
from __future__ import annotations

import yaml

from hub.licenses import get_license


def merge_card(*, base_model: str | None, license_: dict, spec: dict,
               sources: list[dict], report: dict) -> str:
    """The model card: front matter (base_model, library_name, license, tags) and the
    sources (owner/name@version, sha256, weight, licence), method, parameters, energy kept
    and the attributions the sources' licences require.

    `sources`: [{"adapter", "version", "owner", "sha256", "weight", "license",
    "license_name", "license_link"}] in the merge's order.
    """
    front: dict = {}
    if base_model:
        front["base_model"] = base_model
    front["library_name"] = "peft"
    front["license"] = license_["id"]
    if license_["id"] == "other":
        front["license_name"] = license_.get("license_name") or "other"
        if license_.get("license_link"):
            front["license_link"] = license_["license_link"]
    front["tags"] = ["lora", "merge", "lorastack"]
    lines = ["---", yaml.safe_dump(front, sort_keys=False, allow_unicode=True).rstrip(), "---",
             "", f"# Merge of {', '.join(src['adapter'] for src in sources)}", "",
             f"A {spec['method']} merge of {len(sources)} LoRA adapter"
             f"{'s' if len(sources) != 1 else ''}"
             + (f" for `{base_model}`" if base_model else "") + ", made by lorastack.", "",
             "## Sources", "", "| adapter | version | weight | licence | sha256 |",
             "|---|---|---|---|---|"]
    for source in sources:
        lines.append(f"| {source['adapter']} | {source['version']} | {source['weight']:g} |"
                     f" {_license_label(source)} | `{source['sha256']}` |")
    lines += ["", "## Method", "", f"- method: `{spec['method']}`"]
    dense = spec["method"] not in ("linear", "svd", "cat")
    for key in ("rank", "density", "majority_sign_method", "seed", "output", "dtype"):
        # Only what shaped the result: a linear merge draws nothing from a seed.
        if spec.get(key) is not None and (dense or key not in ("majority_sign_method", "seed")):
            lines.append(f"- {key}: `{spec[key]}`")
    kept = report.get("energy_kept_min")
    if kept is not None:
        lines.append(f"- energy kept (the lowest over modules): {kept:.6f}")
    lines += ["", "`merge_report.json` has every module's rank and energy kept.", "",
              "## Licence", "", _license_sentence(license_)]
    attributions = [source for source in sources if _requires_attribution(source)]
    if attributions:
        lines += ["", "## Attribution", ""]
        lines += [f"- {s['adapter']}@{s['version']} by {s['owner']}, under"
                  f" {_license_label(s)}" + (f" ({_license_url(s)})" if _license_url(s) else "")
                  for s in attributions]
    return "\n".join(lines) + "\n"


def _license_label(source: dict) -> str:
    if source["license"] == "other":
        return source.get("license_name") or "other"
    return source["license"]


def _license_url(source: dict) -> str | None:
    if source["license"] == "other":
        return source.get("license_link")
    return get_license(source["license"]).url


def _requires_attribution(source: dict) -> bool:
    return get_license(source["license"]).attribution


def _license_sentence(license_: dict) -> str:
    name = license_.get("license_name") or license_["id"]
    parts = [f"This merge is released under {name}, derived from its sources' licences."]
    if not license_.get("commercial_use", True):
        parts.append("Commercial use is not allowed.")
    if license_.get("derivatives") == "share-alike":
        parts.append("Derivatives must be released under the same licence.")
    if license_.get("derivatives") == "forbidden":
        parts.append("Derivatives of it may not be published.")
    if license_.get("use_restrictions"):
        parts.append("Use restrictions of the sources apply.")
    parts += [f"Why: {reason}." for reason in license_.get("reasons", [])]
    return " ".join(parts)
