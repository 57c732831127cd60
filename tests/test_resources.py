"""Jobs ask the cluster for what their data needs, from rates measured on the shipped workflow."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from arepas import resources

MEASUREMENTS = Path(__file__).resolve().parents[1] / "bench" / "measurements"


def round_up(value: float, digits: int = 2) -> float:
    """Up to `digits` significant digits, never below the value."""
    if value <= 0:
        return 0.0
    scale = 10 ** (math.floor(math.log10(value)) - digits + 1)
    return math.ceil(value / scale - 1e-9) * scale


def test_the_rates_are_those_of_the_measurement_files():
    """SUBJECT_RATES, derived again from BENCHMARKS.md's measurement files: the slowest measured
    job's seconds per network slice and the largest peak memory at the published sizes, and the
    memory per native voxel of the scaling section for the rules that hold native volumes, each
    rounded up to two significant digits."""
    from bench import scaling

    published = json.loads((MEASUREMENTS / "published_sizes.json").read_text())["data"]
    per_voxel = scaling.summarise(
        json.loads((MEASUREMENTS / "scaling.json").read_text())["data"]
    )["memory_bytes_per_voxel"]
    records = pd.DataFrame(published["records"])
    for rule, rate in resources.SUBJECT_RATES.items():
        jobs = records[records["rule"] == rule]
        assert len(jobs), rule
        slices = published["slices"]
        per_slice = max(r.s / slices[f"{r.dataset}/{r.job}"] for r in jobs.itertuples())
        derived = {
            "s_per_slice": round_up(per_slice),
            "peak_mb": round_up(float(jobs["max_rss"].max())),
            # bytes per voxel = MB per megavoxel; only where native volumes are held.
            "mb_per_mvoxel": round_up(per_voxel) if rate.mb_per_mvoxel else 0.0,
        }
        assert derived == pytest.approx(
            {"s_per_slice": rate.s_per_slice, "peak_mb": rate.peak_mb,
             "mb_per_mvoxel": rate.mb_per_mvoxel}
        ), rule
    for network, megabytes in resources.TRAINING_MB.items():
        jobs = records[records["rule"] == f"train_{network}"]
        assert round_up(float(jobs["max_rss"].max())) == pytest.approx(megabytes), network


def test_requests_grow_with_the_data_and_the_attempt_and_stop_at_the_partition_limit():
    small = resources.subject_estimate("anomaly_maps", slices=50, native_voxels=10_000_000)
    large = resources.subject_estimate("anomaly_maps", slices=300, native_voxels=70_000_000)
    assert large[0] > small[0] and large[1] > small[1]
    assert resources.runtime_min(600, 2, 1440) == 2 * resources.runtime_min(600, 1, 1440)
    assert resources.runtime_min(10**6, 3, 1440) == 1440
    assert resources.runtime_min(1, 1, 1440) == resources.MIN_RUNTIME_MIN
    assert resources.mem_mb(3000, 2) == 2 * resources.mem_mb(3000, 1)
    # A network whose step was not timed on a GPU asks for the partition's limit.
    seconds, _ = resources.training_estimate("dae", 10**9, 720)
    assert resources.runtime_min(seconds, 1, 720) == 720
    seconds, _ = resources.training_estimate("translator", 28_125, 1440)
    assert resources.runtime_min(seconds, 1, 1440) < 1440
