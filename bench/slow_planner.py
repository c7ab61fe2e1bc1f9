"""Planner `slow-template` for the benchmarks: the template planner taking `seconds` per plan (planner setting), standing
for an LLM planner (one plan took 67 s on an H100 in the whole-short benchmark). Profiles name this module
(`planner: {backend: slow-template, module: bench.slow_planner, seconds: 10}`), so worker processes find it too."""

from __future__ import annotations

import time
from typing import Any

from storyboard.backends import register
from storyboard.backends.template_planner import TemplatePlanner


@register("planner", "slow-template")
class SlowTemplate(TemplatePlanner):
    name = "template"  # the same plans and keys as the template planner

    def plan(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(float(self.settings.get("seconds", 0)))
        return super().plan(*args, **kwargs)
