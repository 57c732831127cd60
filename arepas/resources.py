"""What a job asks a cluster for: memory and run time estimated from its data (the subject's
native voxels and network slices, a training job's planned steps) and from rates measured on the
shipped workflow, growing with each retry and capped by the partition's time limit."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class SubjectRate:
    """A per-subject rule's cost: seconds per network slice of the subject (the whole job's time
    over its slices, so fixed costs are spread and large subjects are overestimated, one CPU
    thread); memory: the largest measured job's peak plus mb_per_mvoxel per native megavoxel."""

    s_per_slice: float
    peak_mb: float
    mb_per_mvoxel: float


# From the measurement files of BENCHMARKS.md, "Every rule at the published sizes, on the CPU"
# (seconds per slice, peak memory) and "Scaling with the native volume" (memory per native voxel,
# for the rules that hold native volumes), rounded up: tests/test_resources.py derives them again
# from bench/measurements/ and compares.
SUBJECT_RATES = {
    "preprocess": SubjectRate(s_per_slice=2.4, peak_mb=530.0, mb_per_mvoxel=22.0),
    "reconstruct": SubjectRate(s_per_slice=1.3, peak_mb=680.0, mb_per_mvoxel=0.0),
    "anomaly_maps": SubjectRate(s_per_slice=3.1, peak_mb=880.0, mb_per_mvoxel=22.0),
    "subject_figure": SubjectRate(s_per_slice=0.2, peak_mb=140.0, mb_per_mvoxel=0.0),
    "lesion_masks": SubjectRate(s_per_slice=0.32, peak_mb=270.0, mb_per_mvoxel=22.0),
}
# Seconds per optimiser step of the published networks on one GPU, where measured
# (bench/measurements/translator_step.json, from docs/studies.md, "The translator at the
# published sizes, on a GPU"; bfloat16 there, float32 is slower, hence the margin below). A
# network without a measured rate asks for the partition's limit.
GPU_S_PER_STEP = {"translator": 0.09}
# Memory of a training job (host side), measured on the CPU at the published sizes
# ("Every rule at the published sizes, on the CPU"); it does not grow with the cohort (the
# training stacks are read from disk, "Training memory against the number of training subjects").
TRAINING_MB = {"translator": 4400.0, "scorer": 900.0, "autoencoder": 930.0, "dae": 1500.0}
# Every estimate is multiplied by this margin (other CPUs and GPUs, float32, a busy node), and by
# the attempt number on a retry.
MARGIN = 2.0
MIN_RUNTIME_MIN = 10
MIN_MEM_MB = 1000


def runtime_min(seconds: float, attempt: int, max_runtime_min: int) -> int:
    """Minutes to ask for: the estimate with the margin, times the attempt, at least
    MIN_RUNTIME_MIN and at most the partition's limit."""
    wanted = math.ceil(seconds * MARGIN * attempt / 60.0)
    return int(min(max(wanted, MIN_RUNTIME_MIN), max_runtime_min))


def mem_mb(megabytes: float, attempt: int) -> int:
    """Megabytes to ask for: the estimate with the margin, times the attempt."""
    return int(max(math.ceil(megabytes * MARGIN * attempt), MIN_MEM_MB))


def subject_estimate(rule: str, slices: int, native_voxels: int) -> tuple[float, float]:
    """(seconds, megabytes) of one subject's job of a per-subject rule."""
    rate = SUBJECT_RATES[rule]
    return rate.s_per_slice * slices, rate.peak_mb + rate.mb_per_mvoxel * native_voxels / 1e6


def training_estimate(network: str, steps: int, max_runtime_min: int) -> tuple[float, float]:
    """(seconds, megabytes) of a training job on a GPU; a network whose step was not timed on a
    GPU gets the partition's limit (it resumes from its checkpoint if that is not enough)."""
    rate = GPU_S_PER_STEP.get(network)
    seconds = steps * rate if rate is not None else max_runtime_min * 60.0 / MARGIN
    return seconds, TRAINING_MB[network]
