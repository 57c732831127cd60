import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _single_thread():
    # Tests share two cores; one thread per process keeps timings and results stable.
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


def pytest_collection_modifyitems(config, items):
    """The SLURM test's run takes minutes, mostly waiting for the scheduler: the test that starts
    it goes first, so it runs in the background beside every other test, and the tests that
    read its results go last."""
    first = [item for item in items if item.name == "test_slurm_run_starts"]
    last = [item for item in items if "slurm_run" in getattr(item, "fixturenames", ())]
    chosen = {id(item) for item in first + last}
    items[:] = first + [item for item in items if id(item) not in chosen] + last
