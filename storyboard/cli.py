"""The `storyboard` command: parses options, calls the library, prints results."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from .errors import InputError, StoryboardError
from .progress import Reporter

app = typer.Typer(
    help="Turn a one-line idea into a vertical short, stage by stage, in one run directory.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
err = Console(stderr=True, soft_wrap=True)
out = Console()
log = logging.getLogger("storyboard")
T = TypeVar("T")

EXIT_INTERRUPTED = 130


def _guard(json_out: bool, action: Callable[[Reporter], T]) -> T:
    """Run `action`, turning our errors into messages and exit codes (0/1/2/3/130)."""
    reporter = Reporter(err, quiet=False)
    reporter.setup_logging()
    try:
        return action(reporter)
    except StoryboardError as error:
        err.print(f"[bold red]error:[/] {error}", markup=True, highlight=False)
        if json_out:
            print(json.dumps({"status": "failed", "error": str(error), "exit_code": error.exit_code}))
        raise typer.Exit(error.exit_code) from None
    except KeyboardInterrupt:
        err.print("interrupted; finished beats are kept, rerun to continue")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except OSError as error:  # disk full, permissions: a clean message, previous outputs intact
        err.print(f"[bold red]error:[/] {error.strerror or error}: {error.filename or ''}", markup=True, highlight=False)
        if json_out:
            print(json.dumps({"status": "failed", "error": str(error), "exit_code": 1}))
        raise typer.Exit(1) from None


def _config(profile: str | None, root: Path | None = None, **overrides: dict[str, Any]) -> dict[str, Any]:
    from .pipeline import saved_profile
    from .profiles import resolve_config

    if profile is None and root is not None and root.is_dir():
        profile = saved_profile(root)
    return resolve_config(profile, overrides)


def _print_summary(summary: Any, json_out: bool) -> None:
    data = summary.to_dict()
    if json_out:
        print(json.dumps(data, ensure_ascii=False))
        return
    if summary.status == "up to date":
        err.print(f"up to date: {summary.run_dir} ({summary.seconds:.2f} s)")
    else:
        err.print(f"done: {summary.final or summary.run_dir} ({summary.seconds:.1f} s)")


ProfileOpt = typer.Option(None, "--profile", "-p", help="Profile name or YAML path (default: offline, or the run's own).")
RayOpt = typer.Option(None, "--ray", help="Spread beats over a Ray cluster: auto (running cluster, else a local one) | local | ADDRESS.")
GpusOpt = typer.Option(None, "--gpus", help="Without Ray: split each stage's beats across these local GPUs, e.g. 0,1.")
JsonOpt = typer.Option(False, "--json", help="Machine-readable summary on stdout; everything else on stderr.")
DirArg = typer.Argument(..., help="A run directory, e.g. outputs/20261122-a-cat-judge-1a2b3c.", file_okay=False)


@app.command()
def run(
    idea: str = typer.Option(None, "--idea", "-i", help="One-line idea for a new short."),
    directory: Path = typer.Option(None, "--dir", "-d", help="Existing run directory to continue or fix."),
    format_name: str = typer.Option("drama10", "--format", "-f", help="Format from prompts/formats (see `storyboard formats`)."),
    profile: str = ProfileOpt,
    out_root: Path = typer.Option(Path("outputs"), "--out", "-o", help="Where new run directories go."),
    regen_beats: str = typer.Option(None, "--regen-beats", help="Force beats: 5,7 | 2-4 | all | none (none: re-render only)."),
    quality: str = typer.Option(None, "--quality", help="Image preset: draft | final."),
    seed: int = typer.Option(0, "--seed", help="Base seed of a new plan."),
    keep_going: bool = typer.Option(False, "--keep-going", help="Finish other beats when one fails; exit 1 at the end."),
    with_review: bool = typer.Option(False, "--review", help="Review final.mp4 afterwards and write review.md."),
    with_judge: bool = typer.Option(True, "--judge/--no-judge", help="Judge every beat image (redraw failures) before animating."),
    ray: str = RayOpt,
    gpus: str = GpusOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Run every stage: plan, visual, judge, video, render (and review with --review).

    Example: storyboard run --idea "a cat who wants to be a judge"
    Fix one beat: storyboard run --dir outputs/<run> --regen-beats 5,7
    """
    from .pipeline import run as run_pipeline

    def action(reporter: Reporter) -> Any:
        if (idea is None) == (directory is None):
            raise InputError("give exactly one of --idea or --dir (see storyboard run --help)")
        overrides = {"image": {"quality": quality}}
        summary = run_pipeline(idea, directory, format_name=format_name, profile=profile, out=out_root, regen=regen_beats,
                               keep_going=keep_going, seed=seed, overrides=overrides, reporter=reporter, with_review=with_review,
                               ray=ray, gpus=gpus, with_judge=with_judge)
        _print_summary(summary, json_out)
        return summary

    _guard(json_out, action)


def _stage_command(stages: tuple[str, ...], directory: Path, profile: str | None, json_out: bool, keep_going: bool = False,
                   regen: str | None = None, only_beat: int | None = None, **overrides: dict[str, Any]) -> None:
    from .pipeline import run_stages

    def action(reporter: Reporter) -> Any:
        config = _config(profile, directory, **overrides)
        summary = run_stages(directory, config, regen=regen, keep_going=keep_going, reporter=reporter, stages=stages, only_beat=only_beat)
        _print_summary(summary, json_out)
        return summary

    _guard(json_out, action)


@app.command()
def plan(
    idea: str = typer.Option(..., "--idea", "-i", help="One-line idea."),
    format_name: str = typer.Option("drama10", "--format", "-f", help="Format name (see `storyboard formats`)."),
    profile: str = ProfileOpt,
    out_root: Path = typer.Option(Path("outputs"), "--out", "-o", help="Where the run directory goes."),
    seed: int = typer.Option(0, "--seed", help="Base seed of the plan."),
    json_out: bool = JsonOpt,
) -> None:
    """Write plan.json for a new idea (edit it by hand, then run the other stages).

    Example: storyboard plan --idea "why cats knock things off tables" --format explainer5
    """
    from .pipeline import create_run

    def action(reporter: Reporter) -> Path:
        root = create_run(idea, format_name, _config(profile), out_root, seed)
        if json_out:
            print(json.dumps({"status": "ok", "run_dir": str(root), "plan": str(root / "plan.json")}))
        else:
            err.print(f"plan: {root / 'plan.json'}")
        return root

    _guard(json_out, action)


@app.command()
def visual(
    directory: Path = DirArg,
    only_beat: int = typer.Option(None, "--only-beat", help="Draw only this beat (0 is the hook)."),
    quality: str = typer.Option(None, "--quality", help="draft (fast, low resolution) or final."),
    regen_beats: str = typer.Option(None, "--regen-beats", help="Force these beats: 5,7 | all."),
    profile: str = ProfileOpt,
    keep_going: bool = typer.Option(False, "--keep-going", help="Finish other beats when one fails."),
    json_out: bool = JsonOpt,
) -> None:
    """Draw every stale beat image.

    Example: storyboard visual outputs/<run> --only-beat 3 --quality final
    """
    _stage_command(("visual",), directory, profile, json_out, keep_going, regen_beats, only_beat, image={"quality": quality})


@app.command()
def judge(directory: Path = DirArg, profile: str = ProfileOpt, json_out: bool = JsonOpt) -> None:
    """Judge every beat image; redraw failures with a new seed up to max_retries.

    Example: storyboard judge outputs/<run>
    """
    _stage_command(("judge",), directory, profile, json_out)


@app.command()
def video(
    directory: Path = DirArg,
    regen_beats: str = typer.Option(None, "--regen-beats", help="Force these beats: 5,7 | all."),
    profile: str = ProfileOpt,
    keep_going: bool = typer.Option(False, "--keep-going", help="Finish other beats when one fails."),
    json_out: bool = JsonOpt,
) -> None:
    """Voice speaking beats, then animate every stale clip.

    Example: storyboard video outputs/<run> --regen-beats 5
    """
    _stage_command(("video",), directory, profile, json_out, keep_going, regen_beats)


@app.command()
def render(
    directory: Path = DirArg,
    force: bool = typer.Option(False, "--force", help="Re-render even if final.mp4 is current."),
    profile: str = ProfileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Concatenate clips, burn subtitles and the hook title, write final.mp4.

    Example: storyboard render outputs/<run>
    """
    _stage_command(("render",), directory, profile, json_out, regen="none" if force else None)


@app.command()
def batch(
    ideas: Path = typer.Argument(..., help="Ideas file: one idea per line, or JSONL with idea, format, profile, seed.", dir_okay=False),
    out_root: Path = typer.Option(Path("outputs"), "--out", "-o", help="Where the run directories go."),
    format_name: str = typer.Option("drama10", "--format", "-f", help="Default format for plain-text lines."),
    profile: str = ProfileOpt,
    ray: str = RayOpt,
    gpus: str = GpusOpt,
) -> None:
    """Make one short per idea, stage by stage across all of them (each model loads once per stage).

    Keeps going past a failed idea; re-invoked, it redoes only what is missing. Prints a JSON
    summary on stdout; exit 0 only if every idea succeeded.
    Example: storyboard batch ideas.txt --out outputs/nightly
    On a GPU cluster: storyboard batch ideas.txt --ray auto (or --gpus 0,1 on one host without Ray)
    """
    from .batch import run_batch

    def action(reporter: Reporter) -> Any:
        summary = run_batch(ideas, out_root, format_name=format_name, profile=profile, reporter=reporter, ray=ray, gpus=gpus)
        print(json.dumps(summary, ensure_ascii=False))
        if summary["status"] != "ok":
            for failure in summary["failed"]:
                err.print(f"failed: line {failure['line']} ({failure['idea']}): {failure['error']}", highlight=False)
            raise typer.Exit(1)
        return summary

    _guard(True, action)


@app.command()
def review(
    directory: Path = DirArg,
    force: bool = typer.Option(False, "--force", help="Review again even if final.mp4 did not change."),
    profile: str = ProfileOpt,
    json_out: bool = JsonOpt,
) -> None:
    """Watch final.mp4 and write review.md: problems per beat and the command that fixes them.

    Example: storyboard review outputs/<run> --profile gemini
    """
    _stage_command(("review",), directory, profile, json_out, regen="none" if force else None)
    if not json_out:
        path = directory / "review.md"
        if path.is_file():
            out.print(path.read_text(encoding="utf-8"), markup=False, highlight=False)


@app.command()
def status(
    directory: Path = DirArg,
    why: bool = typer.Option(False, "--why", help="Name the field that made each artifact stale."),
    json_out: bool = JsonOpt,
) -> None:
    """Show every beat × artifact as fresh / stale / missing.

    Example: storyboard status outputs/<run> --why
    """
    from .status import status as read_status

    def action(reporter: Reporter) -> Any:
        data = read_status(directory, _config(None, directory))
        if json_out:
            print(json.dumps(data, ensure_ascii=False))
            return data
        table = Table(title=str(directory))
        columns = ["image", "judge", "audio", "clip"]
        table.add_column("beat")
        for column in columns:
            table.add_column(column)
        colours = {"fresh": "green", "stale": "yellow", "missing": "red", "user": "cyan", "flagged": "magenta"}
        for number, row in data["beats"].items():
            cells = []
            for column in columns:
                cell = row.get(column, {"state": "-", "why": ""})
                text = f"[{colours.get(cell['state'], 'white')}]{cell['state']}[/]"
                if why and cell["why"] and cell["state"] not in ("fresh", "-"):
                    text += f" ({cell['why']})"
                cells.append(text)
            table.add_row(f"{number:02d}", *cells)
        out.print(table)
        final = data["final"]
        out.print(f"final.mp4: {final['state']}" + (f" ({final['why']})" if why and final["why"] else ""))
        return data

    _guard(json_out, action)


@app.command()
def formats(json_out: bool = JsonOpt) -> None:
    """List the formats in prompts/formats.

    Example: storyboard formats
    """
    from .formats import format_names, load_format

    def action(reporter: Reporter) -> None:
        rows = []
        for name in format_names():
            try:
                fmt = load_format(name)
                rows.append({"name": name, "beats": len(fmt.beats), "size": f"{fmt.width}x{fmt.height}", "description": fmt.description})
            except StoryboardError as error:
                rows.append({"name": name, "beats": 0, "size": "-", "description": f"BROKEN: {error}"})
        if json_out:
            print(json.dumps(rows, ensure_ascii=False))
            return
        table = Table("format", "beats", "size", "description")
        for row in rows:
            table.add_row(row["name"], str(row["beats"]), row["size"], row["description"])
        out.print(table)

    _guard(json_out, action)


@app.command()
def doctor(profile: str = ProfileOpt, json_out: bool = JsonOpt) -> None:
    """Check ffmpeg, fonts, GPU, configured models and API keys.

    Example: storyboard doctor --profile offline
    """
    from .preflight import doctor as run_doctor

    def action(reporter: Reporter) -> None:
        checks = run_doctor(_config(profile))
        if json_out:
            print(json.dumps([c.__dict__ for c in checks], ensure_ascii=False))
        else:
            for c in checks:
                mark = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
                out.print(f"{mark:>14} {c.name}: {c.detail}" + (f"\n{'':>6}fix: {c.fix}" if c.fix and not c.ok else ""), highlight=False)
        if not all(c.ok for c in checks):
            raise typer.Exit(1)

    _guard(json_out, action)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
