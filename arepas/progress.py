"""Training budgets in optimiser steps, and progress lines with an expected end.

Every network's settings have `max_steps` (None: train `epochs` epochs; a positive number: stop
after that many optimiser steps, mid-epoch if need be), so one budget can be set for cohorts of
any size. The helpers here count the steps a training run will take without running it, check
the setting, and report a running job's progress, in lines such as

translator: step 1200/28000 (4.3 %), 0.089 s/step, 41 min left, expected end 2026-12-07 14:03 UTC
"""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

# Seconds between two progress lines at most (an epoch's end always gets one).
DEFAULT_INTERVAL = 60.0


def check_max_steps(value: object) -> None:
    """Raise ValueError naming `max_steps` unless value is None or a whole number >= 1."""
    # bool is an int subclass: a `max_steps: true` in a config must not mean one step.
    whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if value is not None and not (whole and value >= 1):
        raise ValueError(
            f"max_steps must be a positive whole number of steps or null, got {value!r}"
        )


def batches_per_epoch(n: int, batch_size: int, smallest: int = 1) -> int:
    """Batches of one epoch over n samples taken batch_size at a time, where a batch of fewer
    than `smallest` samples is skipped (2 for the networks with batch norm, which need two
    samples for batch statistics; 1 keeps every batch)."""
    if batch_size < smallest:
        return 0
    full, rest = divmod(max(int(n), 0), batch_size)
    return full + (1 if rest and rest >= smallest else 0)


def capped_steps(epochs: int, steps_per_epoch: int, max_steps: int | None) -> int:
    """Optimiser steps of `epochs` epochs of steps_per_epoch steps, at most max_steps."""
    steps = epochs * steps_per_epoch
    return steps if max_steps is None else min(steps, max_steps)


def effective_epochs(epochs: int, steps_per_epoch: int, max_steps: int | None) -> int:
    """Epochs a run starts under the budget: the last one may be cut short by max_steps."""
    if steps_per_epoch <= 0:
        # No step to count: the epochs run (empty) as without a budget.
        return epochs
    return -(-capped_steps(epochs, steps_per_epoch, max_steps) // steps_per_epoch)


def _utc_now() -> datetime:
    return datetime.now(UTC)


def format_duration(seconds: float) -> str:
    """'40 s', '41 min', '3 h 05 min'."""
    if seconds < 90:
        return f"{round(seconds)} s"
    minutes = round(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class StepProgress:
    """Progress lines of one training run, through its `progress` callback.

    The training loop calls step() after each optimiser step and epoch_end() after each epoch.
    A line is written at most every `interval` seconds, and at every epoch's end. `done` is the
    number of steps done before this run (a resumed run sets it before its first step); `total`
    the planned number, which a caller may raise (the scorer, on a restart).

    The time per step is measured over this run's steps after its first, which includes the
    start-up cost (first batch, kernel selection, data-loader workers). `clock` (monotonic
    seconds) and `now` (the wall clock, aware UTC) are injectable for tests.
    """

    def __init__(
        self,
        name: str,
        total: int,
        progress: Callable[[str], None] = print,
        done: int = 0,
        interval: float = DEFAULT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.name, self.total, self.done = name, int(total), int(done)
        self.progress, self.interval, self.clock, self.now = progress, interval, clock, now
        # (clock, done) after this run's first step: the rate is measured from there.
        self._first: tuple[float, int] | None = None
        self._last_line = clock()

    def seconds_per_step(self, at: float | None = None) -> float | None:
        """Mean seconds per step of this run after its first step; None before a second one."""
        if self._first is None or self.done <= self._first[1]:
            return None
        at = self.clock() if at is None else at
        return (at - self._first[0]) / (self.done - self._first[1])

    def line(self, at: float | None = None) -> str:
        """The progress line as of now (or of clock time `at`)."""
        at = self.clock() if at is None else at
        share = 100.0 * self.done / self.total if self.total > 0 else 100.0
        text = f"{self.name}: step {self.done}/{self.total} ({share:.1f} %)"
        rate = self.seconds_per_step(at)
        if rate is None:
            return text
        left = max(self.total - self.done, 0) * rate
        end = self.now() + timedelta(seconds=left)
        return (
            f"{text}, {rate:.3g} s/step, {format_duration(left)} left, "
            f"expected end {end.astimezone(UTC):%Y-%m-%d %H:%M} UTC"
        )

    def step(self, count: int = 1) -> None:
        """Count `count` optimiser steps; write a line if `interval` has passed since the last."""
        self.done += count
        at = self.clock()
        if self._first is None:
            self._first = (at, self.done)
        if at - self._last_line >= self.interval:
            self._emit(at)

    def epoch_end(self) -> None:
        """Write a line (an epoch's end always gets one)."""
        self._emit(self.clock())

    def _emit(self, at: float) -> None:
        self._last_line = at
        self.progress(self.line(at))
