"""The checks CI runs beside the tests: ruff, snakefmt and Snakemake's own linter."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True)


def test_ruff_reports_nothing():
    result = _run(
        str(BIN / "ruff"), "check", "arepas", "tests", "workflow/scripts", "docs", "bench"
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakefmt_reports_nothing():
    result = _run(str(BIN / "snakefmt"), "--check", "Snakefile", "workflow/rules")
    assert result.returncode == 0, result.stdout + result.stderr


def test_snakemake_lint_has_no_findings():
    result = _run(sys.executable, "-m", "snakemake", "--lint", "--configfile", "config/tiny.yaml")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Lints for" not in output, output
