"""A version's layout: what a merge plan needs of its weights, without reading them.

Module shapes, ranks and scalings come from adapter_config.json and the safetensors
header (the blob's first bytes), read once through the store and kept on the version
row, so a plan is answered from the database from then on.
"""
from __future__ import annotations

import struct

from sqlalchemy.orm import Session

from hub.errors import InvalidSafetensors
from hub.formats import (CONFIG_FILE, WEIGHTS_FILE, check_lora_tensors, module_scaling,
                         parse_adapter_config, parse_safetensors_header)
from hub.merge.compat import ModuleShape, SourceShapes
from hub.models import Version
from hub.storage import BlobStore

LAYOUT_FORMAT = 2
MAX_HEADER_BYTES = 16 * 1024 * 1024


def version_layout(session: Session, store: BlobStore, version: Version) -> dict:
    """The version's layout, read from its blobs the first time and kept on the row."""
    layout = version.layout
    if layout is None or layout.get("format") != LAYOUT_FORMAT:
        layout = read_layout(store, version)
        version.layout = layout
        session.flush()
    return layout


def read_layout(store: BlobStore, version: Version) -> dict:
    """Read a version's layout from its config and its weights' header in the store."""
    files = {file.path: file for file in version.files}
    with store.open_read(files[CONFIG_FILE].blob_key) as handle:
        config = parse_adapter_config(handle.read(1_000_001))
    weights = files[WEIGHTS_FILE]
    with store.open_read(weights.blob_key) as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise InvalidSafetensors(f"{WEIGHTS_FILE} of {version.label} is truncated")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise InvalidSafetensors(f"{WEIGHTS_FILE} has a {length}-byte header")
        header = parse_safetensors_header(handle.read(length), weights.size,
                                          max_header_bytes=MAX_HEADER_BYTES)
    modules = {}
    for module in check_lora_tensors(config, header).lora_modules():
        # A is (r, in) or, for an embedding, (r, num_embeddings); B is (out, r).
        modules[module.name] = {"kind": module.kind,
                                "shape": [module.b.shape[0], module.a.shape[1]],
                                "rank": module.a.shape[0],
                                "scale": module_scaling(config, module.name),
                                "dtype": module.a.dtype}
    return {"format": LAYOUT_FORMAT, "modules": modules,
            # The engine compares what the configs say, not the catalog's base_model
            # (which metadata or a README may have set).
            "base_model": config.get("base_model_name_or_path") or None,
            "fan_in_fan_out": bool(config.get("fan_in_fan_out", False)),
            "dtypes": sorted({entry["dtype"] for entry in modules.values()}),
            "config_sha256": files[CONFIG_FILE].sha256}


def source_shapes(label: str, layout: dict) -> SourceShapes:
    """The layout as the compatibility rules (hub.merge.compat) read it."""
    return SourceShapes(label, layout["base_model"], {
        name: ModuleShape(m["kind"], m["shape"][0], m["shape"][1], m["rank"])
        for name, m in layout["modules"].items()}, layout["fan_in_fan_out"])
