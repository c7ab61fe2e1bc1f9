"""Content keys: what an artifact was made from, hashed; and file hashes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

Inputs = dict[str, Any]


def content_key(inputs: Inputs) -> str:
    """Hash of exactly the inputs that matter (order-independent)."""
    blob = json.dumps(inputs, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:24]


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes (short form)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:24]


def changed_fields(old: Inputs, new: Inputs) -> list[str]:
    """Names of the inputs whose values differ, for `status --why`."""
    names = sorted(set(old) | set(new))
    return [name for name in names if old.get(name) != new.get(name)]
