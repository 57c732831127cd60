"""Step budgets and progress lines with an expected end (arepas.progress)."""

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from arepas.autoencoder import AutoencoderSettings
from arepas.dae import DaeSettings
from arepas.progress import (
    StepProgress,
    batches_per_epoch,
    capped_steps,
    check_max_steps,
    effective_epochs,
    format_duration,
)
from arepas.scorer import ScorerSettings
from arepas.translator import TranslatorSettings

ALL_SETTINGS = [TranslatorSettings, ScorerSettings, AutoencoderSettings, DaeSettings]


@pytest.mark.parametrize("settings", ALL_SETTINGS)
@pytest.mark.parametrize("bad", [0, -5, 2.5, 100.0, "100", True])
def test_max_steps_must_be_a_positive_whole_number_naming_the_key(settings, bad):
    with pytest.raises(ValueError, match=r"max_steps must be a positive whole number of steps "
                                         rf"or null, got {bad!r}"):
        settings.from_dict({"max_steps": bad})


@pytest.mark.parametrize("settings", ALL_SETTINGS)
def test_max_steps_is_off_by_default_and_takes_whole_numbers(settings):
    assert settings().max_steps is None
    assert settings.from_dict({"max_steps": 1}).max_steps == 1
    assert settings.from_dict({"max_steps": None}).max_steps is None
    check_max_steps(np.int64(28000))


def test_step_counts_per_epoch_and_under_a_budget():
    assert batches_per_epoch(18, 4) == 5
    assert batches_per_epoch(16, 4) == 4
    # A last batch of one is skipped where batch norm needs two samples.
    assert batches_per_epoch(17, 8, smallest=2) == 2
    assert batches_per_epoch(18, 8, smallest=2) == 3
    assert batches_per_epoch(5, 1, smallest=2) == 0
    assert capped_steps(3, 5, None) == 15 and capped_steps(3, 5, 7) == 7
    assert capped_steps(3, 5, 100) == 15
    assert effective_epochs(3, 5, 7) == 2 and effective_epochs(3, 5, 10) == 2
    assert effective_epochs(3, 5, None) == 3 and effective_epochs(0, 5, 7) == 0
    assert effective_epochs(3, 0, 7) == 3


def test_durations_read_as_seconds_minutes_or_hours():
    assert format_duration(40.4) == "40 s"
    assert format_duration(41 * 60 + 10) == "41 min"
    assert format_duration(3 * 3600 + 5 * 60) == "3 h 05 min"


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


WALL = datetime(2026, 12, 7, 13, 8, tzinfo=UTC)


def test_lines_report_the_rate_after_the_first_step_and_the_expected_end():
    clock, lines = FakeClock(), []
    ticker = StepProgress("translator", 28000, lines.append, done=1000, clock=clock,
                          now=lambda: WALL)
    ticker.epoch_end()
    assert lines == ["translator: step 1000/28000 (3.6 %)"]
    # The first step of a run (10 s: start-up) does not count towards the rate.
    clock.now = 10.0
    ticker.step()
    assert ticker.seconds_per_step() is None
    clock.now = 10.125
    ticker.step()
    assert ticker.seconds_per_step() == 0.125
    for _ in range(398):
        clock.now += 0.125
        ticker.step()
    assert len(lines) == 1 and clock.now == 59.875
    clock.now += 0.125
    ticker.step()
    # 26599 steps left at 0.125 s: 3324.875 s, 55 min; 13:08 + 55 min 25 s.
    assert lines[-1] == (
        "translator: step 1401/28000 (5.0 %), 0.125 s/step, 55 min left, "
        "expected end 2026-12-07 14:03 UTC"
    )


def test_lines_come_at_most_every_interval_and_at_every_epoch_end():
    clock, lines = FakeClock(), []
    ticker = StepProgress("dae", 1000, lines.append, interval=60.0, clock=clock,
                          now=lambda: WALL)
    for step in range(1, 1001):
        clock.now = step * 0.5
        ticker.step()
        if step % 300 == 0:
            ticker.epoch_end()
    # Steps at 0.5 s: a line after each of the 3 epochs, and one whenever a minute (120 steps)
    # has passed since the last line.
    shown = [int(line.split()[2].split("/")[0]) for line in lines]
    assert shown == [120, 240, 300, 420, 540, 600, 720, 840, 900]
    assert lines[-1] == (
        "dae: step 900/1000 (90.0 %), 0.5 s/step, 50 s left, expected end 2026-12-07 13:08 UTC"
    )


def test_a_longer_plan_and_the_wall_clock_are_the_callers():
    clock, lines = FakeClock(), []
    ticker = StepProgress("scorer", 10, lines.append, clock=clock,
                          now=lambda: WALL + timedelta(hours=30))
    for _ in range(4):
        clock.now += 2.0
        ticker.step()
    ticker.total += 10
    ticker.epoch_end()
    assert lines == [
        "scorer: step 4/20 (20.0 %), 2 s/step, 32 s left, expected end 2026-12-08 19:08 UTC"
    ]
