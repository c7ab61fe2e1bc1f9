"""storyboard: a one-line idea to a finished vertical short, stage by stage, on your own GPU.

Library first: every stage is a function on a `RunContext`; the CLI is a thin shell.

    from storyboard import run
    summary = run(idea="a cat who wants to be a judge")
"""

from .context import RunContext, StageResult
from .errors import InputError, LockedError, PreflightError, StageError, StoryboardError
from .pipeline import RunSummary, create_run, run, run_stages
from .rundir import RunDir
from .schema import Beat, CastMember, Hook, Plan, load_plan

__all__ = [
    "Beat", "CastMember", "Hook", "InputError", "LockedError", "Plan", "PreflightError", "RunContext", "RunDir",
    "RunSummary", "StageError", "StageResult", "StoryboardError", "create_run", "load_plan", "run", "run_stages",
]
