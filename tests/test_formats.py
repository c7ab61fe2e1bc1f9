from pathlib import Path

import pytest

from storyboard.errors import InputError
from storyboard.formats import format_names, load_format


def test_builtin_formats_load() -> None:
    assert {"drama10", "explainer5"} <= set(format_names())
    drama = load_format("drama10")
    assert len(drama.beats) == 10 and (drama.width, drama.height) == (512, 768)
    assert {b.renderer for b in drama.beats} == {"a2v", "i2v", "sfx"}
    assert len(load_format("explainer5").beats) == 5


def test_unknown_format_lists_valid_ones() -> None:
    with pytest.raises(InputError, match="valid formats: drama10, explainer5"):
        load_format("sitcom")


def test_broken_format_yaml_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "formats").mkdir()
    (tmp_path / "formats" / "bad.yaml").write_text("name: bad\nbeats: [unclosed\n")
    (tmp_path / "formats" / "thin.yaml").write_text("name: thin\n")
    monkeypatch.setenv("STORYBOARD_PROMPTS", str(tmp_path))
    with pytest.raises(InputError, match=r"(?s)bad\.yaml: broken YAML.*valid formats: bad, thin") as info:
        load_format("bad")
    assert "valid formats" in str(info.value)
    with pytest.raises(InputError, match=r"thin\.yaml: field description"):
        load_format("thin")
