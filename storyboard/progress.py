"""Progress: bars with ETA on a terminal, plain log lines otherwise; always on stderr."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("storyboard")


class Reporter:
    """Stage/beat progress for people, without polluting stdout."""

    def __init__(self, console: Console | None = None, quiet: bool = False) -> None:
        self.console = console or Console(stderr=True)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet

    def setup_logging(self, level: int = logging.INFO) -> None:
        handler: logging.Handler
        if self.console.is_terminal:
            handler = RichHandler(console=self.console, show_path=False, show_time=False, rich_tracebacks=False)
            handler.setFormatter(logging.Formatter("%(message)s"))
        else:
            handler = logging.StreamHandler(self.console.file)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        root = logging.getLogger("storyboard")
        root.handlers[:] = [handler]
        root.setLevel(logging.WARNING if self.quiet else level)
        root.propagate = False

    @contextlib.contextmanager
    def stage(self, name: str, total: int) -> Iterator[Callable[[str], None]]:
        """Yield `advance(label)`; called once per finished item."""
        started = time.monotonic()
        if self.live and total:
            columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), TimeRemainingColumn()]
            with Progress(*columns, console=self.console, transient=False) as bar:
                task = bar.add_task(name, total=total)

                def advance(label: str) -> None:
                    bar.update(task, advance=1, description=f"{name}: {label}")

                yield advance
        else:
            count = 0

            def advance(label: str) -> None:
                nonlocal count
                count += 1
                log.info("%s %d/%d %s", name, count, total, label)

            yield advance
        log.info("%s done in %.1f s", name, time.monotonic() - started)
