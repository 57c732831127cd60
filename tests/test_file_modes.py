"""Results are shared: every writer creates its file with the user's umask, not mkstemp's 0600."""

import os
import stat

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from arepas import io
from arepas.figures import save_figure


@pytest.fixture(params=[0o022, 0o002, 0o077], ids=["umask022", "umask002", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _writers(folder):
    """(path, write) for every public writer of the package."""

    def torch_file(path):
        import torch

        io.save_torch({"weight": torch.zeros(2)}, path)

    def text(path):
        with io.atomic_path(path) as tmp:
            tmp.write_text("# summary\n")

    def figure(path):
        fig = Figure()
        fig.add_subplot().plot([0, 1])
        save_figure(fig, path)

    return [
        (
            folder / "maps" / "s1_native.nii.gz",
            lambda p: io.save_volume(p, np.ones((3, 3, 3)), np.eye(4)),
        ),
        (
            folder / "masks" / "s1.nii.gz",
            lambda p: io.save_mask(p, np.ones((3, 3, 3), bool), np.eye(4)),
        ),
        (folder / "s1" / "slices.npz", lambda p: io.save_arrays(p, a=np.zeros(3))),
        (folder / "metrics" / "summary.tsv", lambda p: io.save_table(p, pd.DataFrame({"a": [1]}))),
        (folder / "models" / "scorer.pt", torch_file),
        (folder / "summary.md", text),
        (folder / "figures" / "s1.png", figure),
    ]


def test_every_writer_creates_files_with_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    for path, write in _writers(tmp_path):
        write(path)
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == expected, f"{path.name}: mode {mode:o}, expected {expected:o}"
        if umask == 0o022:
            assert mode & stat.S_IRGRP and mode & stat.S_IROTH
    # Only the results are left: no temporary file beside them.
    names = sorted(p.name for p in tmp_path.rglob("*") if p.is_file())
    assert names == sorted(path.name for path, _ in _writers(tmp_path))


def test_a_rewrite_takes_the_umask_too(tmp_path):
    # A file left private by an older run becomes readable when the rule writes it again.
    path = tmp_path / "summary.tsv"
    path.write_text("old")
    path.chmod(0o600)
    old = os.umask(0o022)
    try:
        io.save_table(path, pd.DataFrame({"a": [1]}))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
