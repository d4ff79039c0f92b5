"""Progress of long work on stderr: one rich display shared by nested jobs (a MAD score's overall
bar and the training run inside it), and plain lines where stderr is not a terminal (logs, CI)."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator

__all__ = ["Bar", "progress_bar"]

_SHARED: list = []  # the live rich display nested bars join (at most one: the outermost bar's)


class Bar:
    """One bar of a progress display.

    ``phase`` says what the job is doing now ("compiling ...", "training"); on a console that is
    not a terminal each phase is printed as one line, since a live bar shows nothing there until
    it ends. ``update`` moves the bar; ``log`` prints a line above the bars.
    """

    def __init__(self, progress, task_id, description: str, console, interactive: bool, total=None,
                 title: str | None = None):
        self._progress = progress
        self._task = task_id
        self._console = console
        self._interactive = interactive
        self._description = description
        self._title = title or description
        self._completed = 0
        self._total = total
        self._info = ""
        self._start = time.perf_counter()
        if not interactive:
            self._line(f"{description} ...")

    def phase(self, description: str, *, total=..., completed: float | None = None) -> None:
        """Names what the job does now (and optionally resets its total/completed)."""
        if description == self._description and total is ... and completed is None:
            return
        self._description = description
        changes = {"description": description}
        if total is not ...:
            changes["total"] = total
            self._total = total
        if completed is not None:
            changes["completed"] = completed
            self._completed = completed
        if self._interactive:
            self._progress.update(self._task, **changes)
        else:
            self._line(f"{description} ...")

    def update(self, *, completed: float | None = None, total: float | None = None, info: str | None = None) -> None:
        """Moves the bar to ``completed`` of ``total`` and sets the text after it."""
        changes = {}
        if completed is not None:
            changes["completed"] = self._completed = completed
        if total is not None:
            changes["total"] = self._total = total
        if info is not None:
            changes["info"] = self._info = info
        if self._interactive:
            self._progress.update(self._task, **changes)

    def advance(self, n: float = 1) -> None:
        """Adds ``n`` to the completed count."""
        self.update(completed=self._completed + n)

    def log(self, message: str) -> None:
        """Prints one line above the bars (rich markup allowed)."""
        self._console.print(message, highlight=False, soft_wrap=not self._interactive)

    def _close(self) -> None:
        if not self._interactive:
            done = "" if self._total is None else f" {self._completed:g}/{self._total:g}"
            text = f"{self._title}:{done} done in {time.perf_counter() - self._start:.1f}s"
            info = " ".join(self._info.replace("[red]", "").split())
            self._line(text + (f", {info}" if info else ""))

    def _line(self, text: str) -> None:
        self._console.print(text, highlight=False, markup=False, soft_wrap=True)


class _NoBar:
    """A disabled bar: every call does nothing."""

    def phase(self, *args, **kwargs) -> None:
        pass

    def update(self, *args, **kwargs) -> None:
        pass

    def advance(self, *args, **kwargs) -> None:
        pass

    def log(self, *args, **kwargs) -> None:
        pass


def _new_display(console):
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(TextColumn("[progress.description]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
                    console=console)


@contextlib.contextmanager
def progress_bar(description: str, total: float | None = None, *, enabled: bool = True, title: str | None = None,
                 console=None) -> Iterator[Bar | _NoBar]:
    """A progress bar on stderr for the duration of a ``with`` block.

    The outermost bar starts a rich display; bars opened inside it (a training run inside a MAD
    score) join that display and are removed when their block ends, so the display stays a
    few lines however many runs go by. When stderr is not a terminal (a log file, a test, CI)
    nothing is redrawn: each phase and each bar's end is printed as one line instead.

    Arguments:
        description: what the bar counts, e.g. ``"MAD score"`` or ``"compiling ..."``.
        total: the count at completion (None: unknown until ``phase``/``update`` sets it).
        enabled: False gives a bar that does nothing.
        title: what the closing line (printed where stderr is not a terminal) calls the job
            (default: ``description``).
        console: a ``rich.console.Console`` (default: one on stderr).

    Returns:
        A context manager yielding the ``Bar``.
    """
    if not enabled:
        yield _NoBar()
        return
    if _SHARED:
        display, interactive, console = _SHARED[-1]
        task_id = display.add_task(description, total=total, info="") if interactive else None
        bar = Bar(display, task_id, description, console, interactive, total, title)
        try:
            yield bar
        finally:
            if interactive:
                display.remove_task(task_id)
            bar._close()
        return
    from rich.console import Console

    console = console or Console(stderr=True)
    interactive = console.is_interactive or console.is_jupyter
    display = _new_display(console) if interactive else None
    task_id = None
    if interactive:
        display.start()
        task_id = display.add_task(description, total=total, info="")
    bar = Bar(display, task_id, description, console, interactive, total, title)
    _SHARED.append((display, interactive, console))
    try:
        yield bar
    finally:
        _SHARED.pop()
        if interactive:
            display.stop()
        else:
            bar._close()
