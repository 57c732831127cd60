"""The epoch loop of the autoencoder baselines: best-validation weights, resume, history."""

import numpy as np
import pytest
import torch
from torch import nn

from arepas.epochs import as_slice_batch, epoch_order, fit_epochs, stack_rows


def _fit(epochs: int, val_losses: list[float], checkpoint, seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Linear(3, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.arange(12, dtype=torch.float32).reshape(4, 3) / 10
    weights = {}

    def run_epoch(epoch: int, batches: int | None = None) -> float:
        loss = model(data).pow(2).mean()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        weights[epoch] = model.weight.detach().clone()
        return float(loss.detach())

    def validate() -> float:
        return val_losses[len(weights) - 1]

    rows = fit_epochs(model, optimiser, run_epoch, validate, epochs, {"lr": 0.1}, seed,
                      checkpoint, torch.device("cpu"), "toy", "l1", progress=lambda _: None)
    return model, rows, weights


def test_the_lowest_validation_epoch_is_kept_and_the_history_names_the_loss():
    model, rows, weights = _fit(3, [0.5, 0.2, 0.4], None)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert [r["val_l1"] for r in rows] == [0.5, 0.2, 0.4]
    assert torch.equal(model.weight, weights[2]) and not model.training


def test_an_interrupted_run_resumes_to_the_same_weights_and_history(tmp_path):
    whole, whole_rows, _ = _fit(4, [0.5, 0.3, 0.4, 0.1], None)
    _fit(2, [0.5, 0.3], tmp_path / "toy_last.pt")
    # The second call finds the checkpoint of epoch 2 and runs epochs 3 and 4 only.
    resumed, rows, ran = _fit(4, [0.4, 0.1], tmp_path / "toy_last.pt")
    assert sorted(ran) == [3, 4]
    assert rows == whole_rows
    assert torch.equal(resumed.weight, whole.weight)


def test_a_checkpoint_of_other_settings_is_refused(tmp_path):
    _fit(1, [0.5], tmp_path / "toy_last.pt")
    with pytest.raises(ValueError, match="seed"):
        _fit(2, [0.5, 0.4], tmp_path / "toy_last.pt", seed=1)


def test_batches_and_order_helpers():
    assert np.array_equal(epoch_order(3, 2, 10), epoch_order(3, 2, 10))
    assert not np.array_equal(epoch_order(3, 2, 10), epoch_order(3, 3, 10))
    batch = as_slice_batch(np.zeros((5, 4, 4)))
    assert batch.shape == (5, 1, 4, 4) and batch.dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(n, S, S\)"):
        as_slice_batch(np.zeros((4, 4)))
    assert torch.equal(stack_rows(batch, torch.tensor([0, 2])), batch[[0, 2]])


def test_a_step_budget_cuts_the_last_epoch_and_needs_the_epoch_length(tmp_path):
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    asked = []

    def run_epoch(epoch: int, batches: int | None) -> float:
        asked.append((epoch, batches))
        return 1.0 / epoch

    common = (model, optimiser, run_epoch, None, 5, {"lr": 0.1, "max_steps": 7}, 0)
    rows = fit_epochs(*common, tmp_path / "toy.pt", torch.device("cpu"), "toy", "l1",
                      progress=lambda _: None, steps_per_epoch=3, max_steps=7)
    # 7 steps of 3 an epoch: two whole epochs and one of a single batch.
    assert asked == [(1, None), (2, None), (3, 1)]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    saved = torch.load(tmp_path / "toy.pt", weights_only=True)
    # The budget is not among the settings a resume must match.
    assert saved["steps"] == 7 and "max_steps" not in saved["settings_json"]
    with pytest.raises(ValueError, match="max_steps needs steps_per_epoch"):
        fit_epochs(*common, None, torch.device("cpu"), "toy", "l1", max_steps=7)
