"""What the numbers were measured on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _proc_field(path: str, key: str) -> str | None:
    """The value of the first `key:` line of a /proc file, or None."""
    file = Path(path)
    lines = file.read_text().splitlines() if file.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith(key)), None)


def cpu_model() -> str:
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"


def memory_gib() -> float:
    total = _proc_field("/proc/meminfo", "MemTotal")
    return int(total.split()[0]) / 1024**2 if total else float("nan")


def gpu_name() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "none"


def describe() -> dict:
    """Machine and software facts for the report header and each section's record."""
    import numpy
    import torch

    return {"date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu_model(),
            "cores": os.cpu_count(), "memory_gib": round(memory_gib(), 1), "gpu": gpu_name(),
            "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__,
            "load_average": [round(v, 2) for v in os.getloadavg()], **code_state()}


def git(*args: str, repo: Path = REPO) -> subprocess.CompletedProcess:
    """`git -C repo ARGS`, its output as text; a missing git reads as a failed command."""
    try:
        return subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True)
    except OSError as error:
        return subprocess.CompletedProcess(["git", *args], 127, "", str(error))


def code_state(repo: Path = REPO) -> dict:
    """The commit the code was measured at (None outside a git checkout) and the files that
    differed from it then (tracked changes and untracked files, as `git status` lists them)."""
    head = git("rev-parse", "HEAD", repo=repo)
    if head.returncode != 0:
        return {"commit": None, "dirty": None, "dirty_paths": []}
    status = git("status", "--porcelain", "--untracked-files=all", repo=repo)
    paths = sorted(line[3:].split(" -> ")[-1] for line in status.stdout.splitlines() if line)
    return {"commit": head.stdout.strip(), "dirty": bool(paths), "dirty_paths": paths}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB.

    Linux's VmHWM is the high-water mark of this program's own memory; ru_maxrss is not, since
    Linux carries it across exec: a child started by a big parent reports the parent's RSS.
    """
    high = _proc_field("/proc/self/status", "VmHWM")
    return int(high.split()[0]) / 1024 if high else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
