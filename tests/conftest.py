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
