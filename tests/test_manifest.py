import logging
from pathlib import Path

import pytest

from storyboard.keys import changed_fields, content_key
from storyboard.manifest import Manifest


def test_content_key_is_order_independent_and_sensitive() -> None:
    assert content_key({"a": 1, "b": [1, 2]}) == content_key({"b": [1, 2], "a": 1})
    assert content_key({"a": 1}) != content_key({"a": 2})
    assert changed_fields({"line": "x", "seed": 1}, {"line": "y", "seed": 1}) == ["line"]


def test_freshness_states(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "run.json")
    art = tmp_path / "beats" / "b.png"
    inputs = {"image_prompt": "a desk", "seed": 1}
    assert m.check("beats/b.png", art, inputs).state == "missing"
    art.parent.mkdir()
    art.write_bytes(b"png")
    assert m.check("beats/b.png", art, inputs).state == "adopted"
    m.record("beats/b.png", art, inputs)
    assert m.check("beats/b.png", art, inputs).state == "fresh"
    stale = m.check("beats/b.png", art, {**inputs, "image_prompt": "a beach"})
    assert (stale.state, stale.why) == ("stale", ["image_prompt"])
    art.write_bytes(b"my own png")
    assert m.check("beats/b.png", art, inputs).state == "user"


def test_corrupt_manifest_warns_and_rebuilds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "run.json"
    path.write_text('{"artifacts": {"beats/b.png": {"key"')
    with caplog.at_level(logging.WARNING, logger="storyboard"):
        m = Manifest.load(path)
    assert m.artifacts == {}
    assert "rebuilding" in caplog.text
