"""What a vision judge is asked about a beat image, and how its answer is read."""

from __future__ import annotations

import json
import re

from . import ImageRequest, Verdict

VERDICT_SCHEMA = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "reason": {"type": "string"}},
    "required": ["ok", "reason"],
}


def question(request: ImageRequest) -> str:
    """The checklist for one image: who and how many, expression, mouths, hands, setting."""
    who = ", ".join(request.characters) if request.characters else "nobody in particular"
    count = len(request.characters)
    checks = [
        f"Exactly {count} main character(s) in frame: {who}." if count else "No main character needs to be in frame.",
        f"Expression: {request.expression}." if request.expression else "",
        "Nobody speaks in this shot: every mouth is closed." if request.silent else "",
        "Hands and fingers look natural (five fingers, no fused or extra limbs).",
        f"Setting: {request.setting}.",
    ]
    lines = "\n".join(f"- {c}" for c in checks if c)
    return (f"This is beat {request.number} of a storyboard. The shot should show: {request.caption}\n"
            f"Check every point:\n{lines}\n"
            "Answer YES if all points hold, else NO, then one short sentence naming what is wrong. "
            "Start your answer with YES or NO.")


def parse_verdict(text: str) -> Verdict:
    """YES/NO + reason from free text or a {"ok", "reason"} JSON object; anything else is a NO."""
    body = text.strip()
    if body.startswith("{"):
        try:
            data = json.loads(body)
            return Verdict(bool(data["ok"]), str(data.get("reason", "")).strip() or ("looks right" if data["ok"] else "no reason given"))
        except (ValueError, KeyError, TypeError):
            pass
    match = re.match(r"\W*(yes|no)\b[\s.,:;!-]*(.*)", body, flags=re.IGNORECASE | re.DOTALL)
    if not match:
        return Verdict(False, f"the judge gave no YES/NO answer: {body[:120]!r}")
    ok = match.group(1).lower() == "yes"
    reason = " ".join(match.group(2).split())[:300]
    return Verdict(ok, reason or ("looks right" if ok else "no reason given"))
