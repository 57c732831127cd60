"""Every file a rule reads or writes is declared: Snakemake then reruns what a change affects
and removes what a rerun replaces (the registration's transforms above all)."""

import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def dry_run_jobs() -> list[dict]:
    """Rule, inputs and outputs of every job of a dry run of the shipped config (every job
    planned, whatever results a checkout already holds)."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--nolock", "--cores", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    jobs = []
    for block in re.split(r"^(?:local)?rule ", result.stdout, flags=re.M)[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, flags=re.M))
        jobs.append(
            {
                "rule": block.split(":", 1)[0],
                "input": set(fields.get("input", "").split(", ")),
                "output": set(fields.get("output", "").split(", ")),
            }
        )
    return jobs


def test_transforms_are_outputs_of_preprocessing_and_inputs_of_the_maps():
    jobs = dry_run_jobs()
    preprocess = [job for job in jobs if job["rule"] == "preprocess"]
    maps = [job for job in jobs if job["rule"] == "anomaly_maps"]
    assert preprocess and maps
    written = set()
    for job in preprocess:
        (mapping,) = [f for f in job["output"] if f.endswith("/mapping.json")]
        transforms = mapping.replace("mapping.json", "transforms")
        assert transforms in job["output"]
        written.add(transforms)
    for job in maps:
        (mapping,) = [f for f in job["input"] if f.endswith("/mapping.json")]
        assert mapping.replace("mapping.json", "transforms") in job["input"]
        assert mapping.replace("mapping.json", "transforms") in written


def test_scripts_take_their_files_from_the_rule():
    # A path built inside a script is a file Snakemake does not know of: not rerun, not removed.
    for script in sorted((REPO / "workflow" / "scripts").glob("*.py")):
        text = script.read_text()
        assert "results/" not in text, f"{script.name} builds a results/ path itself"
        assert '.rsplit("/"' not in text, f"{script.name} derives a path from another"
