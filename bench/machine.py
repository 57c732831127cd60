"""What the numbers were measured on."""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def cpu_model() -> str:
    """The CPU's model name, from lscpu or /proc/cpuinfo."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_gib() -> float:
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024**2
    return float("nan")


def gpu_name() -> str:
    import torch

    if torch.cuda.is_available():
        return ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    return "none"


def describe() -> dict:
    """Machine and software facts for the report header and each section's record."""
    import numpy
    import torch

    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib(), 1),
        "gpu": gpu_name(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        **code_state(),
    }


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
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
