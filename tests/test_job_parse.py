"""A cluster job parses the whole workflow before it runs its rule: that parse imports none of the
heavy libraries the rules themselves use, so that it costs the same small time for every job
(BENCHMARKS.md, "Planning a run and parsing a job, against the cohort size")."""

import re
import subprocess
import sys

import pytest
from test_incremental import TINY, make_workdir, snakemake_env

# Imported by the rule scripts, never by the Snakefile of a job (`--mode remote`).
HEAVY = ("torch", "scipy.ndimage", "skimage", "matplotlib", "ants", "cv2", "sklearn")


def imported_modules(stderr: str) -> set[str]:
    """Module names from `python -X importtime` output."""
    return {m.group(1) for m in re.finditer(r"^import time:.*\|\s+([\w.]+)\s*$", stderr, re.M)}


@pytest.mark.parametrize("configs", [(TINY,), (TINY, "config/published_smoke.yaml")])
def test_a_jobs_parse_imports_no_heavy_library(tmp_path, configs):
    workdir = make_workdir(tmp_path / "run")
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "snakemake", "--mode", "remote",
         "--list-rules", "--configfile", *configs],
        cwd=workdir, capture_output=True, text=True, env=snakemake_env(),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    modules = imported_modules(result.stderr)
    assert "arepas.cohort" in modules, "the workflow was not parsed"
    assert not [m for m in HEAVY if m in modules]
