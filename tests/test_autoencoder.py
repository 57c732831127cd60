import numpy as np
import pytest
import torch
from scipy import ndimage

from arepas.autoencoder import (
    CHECKPOINT_NAME,
    AutoencoderSettings,
    build_autoencoder,
    load_autoencoder,
    reconstruct_autoencoder,
    save_autoencoder,
    train_autoencoder,
)

torch.set_num_threads(1)

SMALL = AutoencoderSettings(base_channels=8, depth=3, latent_channels=4, lr=2e-3, batch_size=8)


def healthy_slices(seed: int, n: int, size: int = 32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 3, 3))
    return np.tanh(3 * field / np.abs(field).max(axis=(1, 2), keepdims=True)).astype(np.float32)


def mean_l1(model, slices):
    return float(np.abs(reconstruct_autoencoder(model, slices) - slices).mean())


def test_training_lowers_l1():
    train, val = healthy_slices(0, 32), healthy_slices(1, 8)
    torch.manual_seed(3)
    untrained = mean_l1(build_autoencoder(SMALL), val)
    settings = AutoencoderSettings(**{**SMALL.to_dict(), "epochs": 8})
    model, history = train_autoencoder(train, val, settings, seed=3, progress=lambda _: None)
    assert list(history["epoch"]) == list(range(1, 9))
    assert history["train_l1"].iloc[-1] < 0.7 * history["train_l1"].iloc[0]
    assert mean_l1(model, val) == pytest.approx(history["val_l1"].min(), rel=1e-4)
    assert mean_l1(model, val) < 0.7 * untrained


def test_resumed_training_matches_uninterrupted(tmp_path):
    train, val = healthy_slices(0, 16), healthy_slices(1, 4)
    three = AutoencoderSettings(**{**SMALL.to_dict(), "epochs": 3})
    two = AutoencoderSettings(**{**SMALL.to_dict(), "epochs": 2})
    quiet = lambda _: None  # noqa: E731

    straight, straight_history = train_autoencoder(train, val, three, 5, tmp_path / "a", quiet)
    train_autoencoder(train, val, two, 5, tmp_path / "b", quiet)
    messages = []
    resumed, resumed_history = train_autoencoder(
        train, val, three, 5, tmp_path / "b", messages.append
    )
    assert any("resuming after epoch 2" in m for m in messages)
    assert sum("epoch" in m and "train L1" in m for m in messages) == 1
    assert straight_history.equals(resumed_history)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [CHECKPOINT_NAME]

    other = AutoencoderSettings(**{**three.to_dict(), "latent_channels": 2})
    with pytest.raises(ValueError, match="other settings or seed"):
        train_autoencoder(train, val, other, 5, tmp_path / "b", quiet)


def test_reconstruct_save_and_load(tmp_path):
    torch.manual_seed(0)
    model = build_autoencoder(SMALL).eval()
    slices = healthy_slices(2, 5)
    recon = reconstruct_autoencoder(model, slices, batch_size=2)
    assert recon.shape == slices.shape and recon.dtype == np.float32
    assert np.all(np.abs(recon) <= 1)
    path = tmp_path / "ae" / "model.pt"
    save_autoencoder(path, model, SMALL, {"dataset": "toy"})
    loaded, settings, meta = load_autoencoder(path)
    assert settings == SMALL and meta == {"dataset": "toy"}
    np.testing.assert_array_equal(reconstruct_autoencoder(loaded, slices, batch_size=2), recon)
    with pytest.raises(ValueError, match="not divisible"):
        reconstruct_autoencoder(model, healthy_slices(2, 1, size=36))


def test_settings_reject_unknown_keys():
    assert AutoencoderSettings.from_dict({}) == AutoencoderSettings()
    with pytest.raises(ValueError, match="unknown autoencoder setting"):
        AutoencoderSettings.from_dict({"learning_rate": 1e-3})


def count_optimiser_steps():
    """(calls, handle): every optimiser step appends to calls until handle.remove()."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    calls = []
    return calls, register_optimizer_step_post_hook(lambda *_: calls.append(1))


@pytest.mark.parametrize(
    ("n_train", "max_steps", "steps", "epochs"),
    # 18 slices in batches of 8: 8, 8, 2, so 3 steps an epoch; 17: the last batch of one is
    # skipped (batch norm), 2 steps.
    [(18, None, 9, [1, 2, 3]), (18, 4, 4, [1, 2]), (18, 6, 6, [1, 2]), (17, None, 6, [1, 2, 3]),
     (17, 3, 3, [1, 2])],
)
def test_planned_steps_are_the_steps_training_takes(n_train, max_steps, steps, epochs):
    from arepas.autoencoder import planned_steps

    settings = AutoencoderSettings(**{**SMALL.to_dict(), "epochs": 3, "max_steps": max_steps})
    calls, handle = count_optimiser_steps()
    messages = []
    try:
        _, history = train_autoencoder(
            healthy_slices(0, n_train), healthy_slices(1, 4), settings, 5,
            progress=messages.append,
        )
    finally:
        handle.remove()
    assert planned_steps(settings, n_train) == len(calls) == steps
    assert history["epoch"].tolist() == epochs and history["val_l1"].notna().all()
    step_lines = [m for m in messages if m.startswith("autoencoder: step ")]
    assert len(step_lines) == len(epochs)
    assert step_lines[-1].startswith(f"autoencoder: step {steps}/{steps} (100.0 %)")


def test_a_capped_run_is_finished_and_a_larger_budget_continues_it_exactly(tmp_path):
    train, val = healthy_slices(0, 16), healthy_slices(1, 4)
    three = AutoencoderSettings(**{**SMALL.to_dict(), "epochs": 3})
    # 2 steps an epoch: 3 steps stop within epoch 2.
    capped = AutoencoderSettings(**{**three.to_dict(), "max_steps": 3})
    quiet = lambda _: None  # noqa: E731
    first, first_history = train_autoencoder(train, val, capped, 5, tmp_path / "b", quiet)
    assert first_history["epoch"].tolist() == [1, 2]
    messages = []
    again, again_history = train_autoencoder(train, val, capped, 5, tmp_path / "b",
                                             messages.append)
    assert messages == ["autoencoder: resuming after epoch 2"]
    assert again_history.equals(first_history)
    straight, straight_history = train_autoencoder(train, val, three, 5, tmp_path / "a", quiet)
    messages = []
    resumed, resumed_history = train_autoencoder(train, val, three, 5, tmp_path / "b",
                                                 messages.append)
    assert messages[0] == (
        "autoencoder: resuming before epoch 2, which max_steps cut short at step 3"
    )
    assert straight_history.equals(resumed_history)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
