"""Which device a training job runs on, and the refusal of a GPU job that sees no GPU.

Training rules ask for one GPU (`resources: gpu=1`). On a machine without GPUs (the 2-core demo,
CI) they train on the CPU: that is what the local profile intends. A job is refused only where a
GPU was clearly meant to be there and torch does not see one:

- it runs under SLURM (``SLURM_JOB_ID`` is set): the slurm profile submitted it with
  ``--gpus``, so a missing GPU is a submission or installation fault, not a choice;
- ``CUDA_VISIBLE_DEVICES`` lists devices, or, where it is unset, the machine has NVIDIA device
  files (``/dev/nvidia0``...): the GPUs exist, and a torch without CUDA or a broken driver
  would leave them idle while the job trains on the CPU for hours.

A job whose rule asks for no GPU (e.g. ``--set-resources train_scorer:gpu=0``), or a config
with ``allow_cpu_training: true``, trains on the CPU wherever it runs.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Mapping
from typing import Any


class NoGPUError(RuntimeError):
    """A job that asked for a GPU sees none; the message names the job and the fixes."""


def visible_gpu_devices(environ: Mapping[str, str]) -> list[str] | None:
    """The devices ``CUDA_VISIBLE_DEVICES`` lists (none for "" or "-1"), or None where unset.

    The same reading as profiles/default's GPU count, so the local GPU cap and this check agree.
    """
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return None
    return [d.strip() for d in visible.split(",") if d.strip() not in ("", "-1")]


def gpu_expected(environ: Mapping[str, str], nvidia_devices: list[str]) -> str | None:
    """Why this process should see a GPU, as a phrase for an error message; None where a
    CPU-only run is normal. ``nvidia_devices``: the machine's /dev/nvidia<N> files."""
    if environ.get("SLURM_JOB_ID"):
        return f"it runs as SLURM job {environ['SLURM_JOB_ID']}, submitted with a GPU request"
    listed = visible_gpu_devices(environ)
    if listed:
        return f"CUDA_VISIBLE_DEVICES={environ['CUDA_VISIBLE_DEVICES']} lists GPUs"
    if listed is None and nvidia_devices:
        return f"this machine has NVIDIA GPUs ({', '.join(sorted(nvidia_devices))})"
    return None


def training_device(
    rule: str,
    job: str,
    gpus_requested: int,
    allow_cpu_training: bool,
    cuda_available: bool | None = None,
    environ: Mapping[str, str] | None = None,
    nvidia_devices: list[str] | None = None,
) -> str:
    """The device to train on: "cuda" where torch sees a GPU, else "cpu" where training on the
    CPU is intended; NoGPUError for a job that asked for a GPU where one was expected (see the
    module notes).

    ``rule`` and ``job`` (its wildcards and log file) name the job in the message. The last three
    arguments default to this process's view (torch, os.environ, /dev); tests pass their own.
    """
    import torch

    if cuda_available is None:
        cuda_available = torch.cuda.is_available()
    if cuda_available:
        return "cuda"
    if gpus_requested < 1 or allow_cpu_training:
        return "cpu"
    environ = os.environ if environ is None else environ
    if nvidia_devices is None:
        nvidia_devices = glob.glob("/dev/nvidia[0-9]*")
    reason = gpu_expected(environ, nvidia_devices)
    if reason is None:
        return "cpu"
    if torch.version.cuda is None:
        cause = (
            f"the installed torch {torch.__version__} has no CUDA support: install a CUDA build "
            "of torch in the environment the jobs run in"
        )
    else:
        cause = (
            f"torch {torch.__version__} (CUDA {torch.version.cuda}) finds no usable device: "
            "check that the job got a GPU (sbatch --gpus; in the slurm profile, the partition "
            "and gpu_model under set-resources) and that the driver works (nvidia-smi)"
        )
    raise NoGPUError(
        f"job {rule} ({job}) asked for a GPU (resources gpu={gpus_requested}) and {reason}, "
        f"but no GPU is visible to it: {cause}. It would otherwise train on the CPU, for hours. "
        "To train on the CPU on purpose, set `allow_cpu_training: true` in the config (or "
        f"`--set-resources {rule}:gpu=0`)."
    )


def job_training_device(smk: Any) -> str:
    """training_device for the job of a Snakemake script, given its ``snakemake`` object: the
    rule's `gpu` resource (after any --set-resources) and the config's `allow_cpu_training`.

    The switch is read from the config, not passed as a rule parameter: changing it must not
    retrain a model that is already there.
    """
    wildcards = ", ".join(f"{key} {value}" for key, value in smk.wildcards.items())
    job = f"{wildcards}, log {smk.log[0]}" if wildcards else f"log {smk.log[0]}"
    return training_device(
        smk.rule,
        job,
        int(getattr(smk.resources, "gpu", 0) or 0),
        bool(smk.config.get("allow_cpu_training", False)),
    )


# mallopt parameters of glibc's malloc.h.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
# glibc refuses mmap thresholds above 32 MiB on 64-bit systems.
_MMAP_THRESHOLD = 32 << 20
_TRIM_THRESHOLD = 256 << 20
_TOP_PAD = 64 << 20


def keep_freed_memory_for_reuse() -> bool:
    """Let glibc's malloc keep the memory a training step frees for the next step.

    A CPU training step allocates and frees the same activation and gradient buffers (hundreds
    of kB to MB each) every time. By default glibc returns such blocks to the kernel on free
    (separate mappings, or a trimmed heap top), and the next step faults every page in again,
    zero-filled. Kept in the heap, the autoencoder, DAE and scorer steps fault far less and run
    faster; the translator's steps change within the noise (the page faults and step times are in
    docs/studies.md, "Training memory: slices from disk against slices in memory"). Peak memory
    is what a step needs either way; the job keeps it until it ends instead of returning it
    between steps.

    Returns whether the C library took the settings (False elsewhere than glibc, e.g. macOS,
    where nothing changes).
    """
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return all(
        mallopt(param, value) == 1
        for param, value in (
            (_M_MMAP_THRESHOLD, _MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
            (_M_TOP_PAD, _TOP_PAD),
        )
    )
