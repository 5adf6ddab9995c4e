"""Progress bars that count work done (tiles embedded, steps trained), with a rate and the time left.

One look for every long stage, in the CLI and the demo alike: a bar, done/total, the rate in the task's own unit
(`unit` field), the time spent and an estimate of the time left. Callers advance a task only after the work is done,
so a bar that does not move means nothing finished. Where the output is not a terminal (a log file, a pipe, CI), a
live bar cannot redraw, so a plain line with the same figures is printed every `log_every` seconds instead.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

LOG_EVERY_S = 30.0


def rate_text(task: Task) -> str:
    """Units done per second (or per minute when slow), in the task's `unit` field ("tiles", "steps", ...)."""
    unit = task.fields.get("unit", "items")
    speed = task.finished_speed or task.speed
    if speed is None:
        return f"? {unit}/s"
    return f"{speed * 60:.1f} {unit}/min" if speed < 0.5 else f"{speed:.1f} {unit}/s"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, sec = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        return Text(rate_text(task), style="progress.data.speed")


class LeftColumn(TimeRemainingColumn):
    """'0:01:08 left' while the total is known; nothing when it is not (no estimate is better than a blank one)."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text.assemble(super().render(task), " left")


class WorkProgress(Progress):
    """A rich Progress that, off a terminal, prints each task's figures as a line at most every `log_every` s."""

    def __init__(self, *columns, log_every: float = LOG_EVERY_S, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self.log_every = log_every
        self._logged: dict[TaskID, float] = {}  # when each task's last line was printed

    def add_task(self, *args, **kwargs) -> TaskID:
        task_id = super().add_task(*args, **kwargs)
        self._logged[task_id] = time.monotonic()
        return task_id

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def _log(self, task_id: TaskID) -> None:
        """The figures as a line, off a terminal; a finished task's last line is rich's own, when the display stops."""
        if self.console.is_terminal or self.disable:
            return
        task = self._tasks[task_id]
        now = time.monotonic()
        if task.finished or now - self._logged[task_id] < self.log_every:
            return
        self._logged[task_id] = now
        self.console.print(progress_line(task), highlight=False, soft_wrap=True)


def progress_line(task: Task) -> str:
    """'tiles embedded: 420/1,260 tiles (35.0 tiles/s), 0:00:12 spent, 0:00:24 left' for logs."""
    total = "?" if task.total is None else f"{task.total:,.0f}"
    left = "" if task.finished or task.total is None else f", {_clock(task.time_remaining)} left"
    unit = task.fields.get("unit", "items")
    return (
        f"{task.description}: {task.completed:,.0f}/{total} {unit} ({rate_text(task)}), "
        f"{_clock(task.elapsed)} spent{left}"
    )


def work_progress(console: Console | None = None, *, log_every: float = LOG_EVERY_S) -> WorkProgress:
    """A progress display whose tasks show done/total, rate, elapsed time and time left ("-:--:--" until known)."""
    return WorkProgress(
        TextColumn("{task.description}", style="bold", markup=False),  # descriptions may hold file names
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("spent"),
        LeftColumn(),
        console=console,
        transient=False,
        log_every=log_every,
    )
