"""The judge's retry loop with a canned judge: NO then YES redraws once; always NO flags."""

from __future__ import annotations

import json
from pathlib import Path

from storyboard.backends import BackendBase, ImageRequest, Verdict, register
from storyboard.context import RunContext
from storyboard.judge import judge

from helpers import media_hashes


@register("judge", "canned")
class CannedJudge(BackendBase):
    """Answers from a queue; counts loads and calls."""

    name = "canned"
    answers: dict[int, list[bool]] = {}
    loads = 0
    calls: list[int] = []

    def __enter__(self) -> CannedJudge:
        CannedJudge.loads += 1
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def judge(self, image: Path, request: ImageRequest) -> Verdict:
        CannedJudge.calls.append(request.number)
        queue = CannedJudge.answers.get(request.number, [])
        ok = queue.pop(0) if queue else True
        return Verdict(ok, "looks right" if ok else "wrong person in frame")


def test_no_then_yes_redraws_with_a_new_seed_then_always_no_is_flagged(run_copy: Path, config: dict) -> None:
    CannedJudge.answers = {3: [False, True], 6: [False, False, False, False]}
    CannedJudge.loads, CannedJudge.calls = 0, []
    config = {**config, "judge": {"backend": "canned", "max_retries": 2}}
    before = media_hashes(run_copy)
    ctx = RunContext.open(run_copy, config)
    result = judge(ctx)
    assert CannedJudge.loads == 1 and ctx.calls["image.load"] == 1
    assert ctx.calls["image.draw"] == 1 + 2  # beat 3 once, beat 6 up to max_retries
    verdicts = json.loads((run_copy / "judge.json").read_text())["beats"]
    assert [a["ok"] for a in verdicts["3"]["attempts"]] == [False, True] and not verdicts["3"]["flagged"]
    assert len(verdicts["6"]["attempts"]) == 3 and verdicts["6"]["flagged"]
    assert len({a["seed"] for a in verdicts["6"]["attempts"]}) == 3  # every redraw has a new seed
    assert sorted(result.done) == list(range(11))
    after = media_hashes(run_copy)
    assert {k for k in after if after[k] != before.get(k)} == {"beats/beat_03_refusal.png", "beats/beat_06_pause.png"}
    # Verdicts are cached by image: judging again asks nothing.
    CannedJudge.calls = []
    assert judge(RunContext.open(run_copy, config)).up_to_date and CannedJudge.calls == []


def test_heuristic_judge_rejects_blank_and_wrong_size(tmp_path: Path) -> None:
    from PIL import Image

    from storyboard.backends.heuristic_judge import HeuristicJudge

    request = ImageRequest(number=1, beat_type="setup", prompt="p", width=64, height=96, seed=0, quality="draft", setting="s")
    j = HeuristicJudge({})
    blank = tmp_path / "blank.png"
    Image.new("RGB", (64, 96), (128, 128, 128)).save(blank)
    assert not j.judge(blank, request).ok
    small = tmp_path / "small.png"
    Image.effect_noise((32, 32), 50).save(small)
    assert "expected 64x96" in j.judge(small, request).reason
    broken = tmp_path / "broken.png"
    broken.write_text("<html>502 Bad Gateway</html>")
    assert "unreadable" in j.judge(broken, request).reason
    good = tmp_path / "good.png"
    Image.effect_noise((64, 96), 50).save(good)
    assert j.judge(good, request).ok
