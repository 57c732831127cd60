"""How long the published translator trains for a cohort of N slices on a GPU: its planned steps
(arepas.translator.planned_steps) times the seconds per step in bench/measurements/
translator_step.json (the stages of the archived GPU study of the published translator, see its
"source"). Written into README.md between markers, so that its numbers come from a measurement
file too."""

from __future__ import annotations

import statistics
from pathlib import Path

from arepas.translator import TranslatorSettings, planned_steps
from bench import tables

START = "<!-- training-time -->"
END = "<!-- /training-time -->"
# Training slices of cohorts a user may bring: a pilot, 100 subjects of about 100 slices, and
# 500 and 1,000 subjects of about 150 slices (thin-slice chest CT, 1 mm brain MRI).
COHORTS = (1_000, 10_000, 75_000, 150_000)
# The budget the README shows as an example: about the reference's one epoch over its own
# 5,791 training slices x 3 copies in batches of 8.
EXAMPLE_BUDGET = 2_172
LONG_EPOCHS = 100


def _hours(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


RECORD = Path(__file__).resolve().parent / "measurements" / "translator_step.json"


def render(record: dict) -> str:
    """The README block from translator_step.json (its stages and machine)."""
    gpu = record["machine"]["gpu"]
    step_s = statistics.median(stage["step_s"] for stage in record["stages"])
    published = TranslatorSettings()
    budgeted = TranslatorSettings(epochs=LONG_EPOCHS, max_steps=EXAMPLE_BUDGET)
    long = TranslatorSettings(epochs=LONG_EPOCHS)
    table_rows = [[f"{n:,}", f"{planned_steps(published, n):,}",
                   *(_hours(planned_steps(s, n) * step_s) for s in (published, budgeted, long))]
                  for n in COHORTS]
    table = tables.markdown_table(
        ["train slices", "steps, 1 epoch (published)", "time, 1 epoch",
         f"time, `max_steps: {EXAMPLE_BUDGET}`", f"time, {LONG_EPOCHS} epochs"], table_rows)
    return (
        f"{START}\n"
        f"At {step_s * 1000:.0f} ms per step of batch 8 (the median over the stages of the "
        "GPU study in `docs/studies.md`, \"The translator at the published sizes, on a GPU\": "
        f"the published translator on one {gpu}, trained with "
        "bfloat16 autocast; float32, now the published default, was not timed there), "
        "the translator trains:\n\n"
        f"{table}\n"
        f"{END}"
    )


def update_readme(readme: Path, block: str) -> bool:
    """Replace the README's block; True if it changed."""
    text = readme.read_text()
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    updated = head + block + tail
    if updated != text:
        readme.write_text(updated)
    return updated != text
