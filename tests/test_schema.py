import json
from pathlib import Path

import pytest

from storyboard.errors import InputError
from storyboard.schema import load_plan, plan_to_json


def test_valid_plan_round_trips(offline_run: Path) -> None:
    plan = load_plan(offline_run / "plan.json")
    assert plan.beat_numbers == list(range(11))
    assert plan.beat_type(0) == "hook" and plan.beat_type(9) == "gavel"
    assert json.loads(plan_to_json(plan)) == json.loads((offline_run / "plan.json").read_text())


def _broken(tmp_path: Path, offline_run: Path, mutate) -> Path:
    data = json.loads((offline_run / "plan.json").read_text())
    mutate(data)
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data))
    return path


def test_bad_json_names_file_and_position(tmp_path: Path) -> None:
    path = tmp_path / "plan.json"
    path.write_text('{"idea": "x",\n  "beats": [}')
    with pytest.raises(InputError, match=r"plan\.json: not valid JSON.*line 2"):
        load_plan(path)


def test_missing_plan_names_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="no plan here"):
        load_plan(tmp_path / "plan.json")


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["hook"].pop("narrator_line"), r"hook\.narrator_line"),
        (lambda d: d["beats"][2].update(duration_sec="long"), r"beats\[2\]\.duration_sec \(beat 3\)"),
        (lambda d: d["beats"][0].update(renderer="x2v"), r"beats\[0\]\.renderer \(beat 1\)"),
        (lambda d: d["beats"][1].update(line=""), r"beats\[1\] \(beat 2\).*a2v beat needs a speaker and a line"),
        (lambda d: d["beats"][3].update(line="hello"), r"beats\[3\] \(beat 4\).*silent"),
        (lambda d: d["beats"][4].update(type="Twist Beat!"), r"beats\[4\]\.type"),
        (lambda d: d["beats"][0].update(speaker="ghost"), r"beat 1: 'ghost' is not in cast"),
        (lambda d: d.update(surprise=1), r"surprise"),
    ],
)
def test_schema_errors_name_the_field(tmp_path: Path, offline_run: Path, mutate, field: str) -> None:
    path = _broken(tmp_path, offline_run, mutate)
    with pytest.raises(InputError, match=field) as info:
        load_plan(path)
    assert str(path) in str(info.value)
