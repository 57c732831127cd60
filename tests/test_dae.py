"""Denoising autoencoder baseline: coarse noise, training that learns to restore, a map that is
larger on an implanted lesion than on healthy tissue, exact resume."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from arepas.dae import (
    CHECKPOINT_NAME,
    DaeSettings,
    build_dae,
    coarse_noise,
    load_dae,
    restore,
    save_dae,
    train_dae,
)

torch.set_num_threads(1)

SMALL = DaeSettings(base_channels=8, depth=2, lr=3e-3, batch_size=8, noise_resolution=8)
QUIET = lambda _: None  # noqa: E731


def healthy_slices(seed: int, n: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Smooth fields in [-1, 1] inside a disc ROI, -1 outside, like the preprocessed slices."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 4, 4))
    field = 0.5 * np.tanh(2 * field / np.abs(field).max(axis=(1, 2), keepdims=True))
    yy, xx = np.indices((size, size)) - (size - 1) / 2
    roi = np.broadcast_to(yy**2 + xx**2 < (0.42 * size) ** 2, field.shape).copy()
    return np.where(roi, field, -1.0).astype(np.float32), roi


def test_coarse_noise_is_smooth_scaled_and_seeded():
    make = lambda seed: coarse_noise((64, 32, 32), 8, 0.4, torch.Generator().manual_seed(seed))  # noqa: E731
    noise = make(0).numpy()
    assert noise.shape == (64, 1, 32, 32)
    # Bilinear upsampling of an 8x8 grid: values between grid points, so a little below 0.4.
    assert 0.25 < noise.std() < 0.45
    # Coarse: neighbouring pixels nearly equal, unlike pixel-wise noise.
    neighbours = np.corrcoef(noise[..., :-1].ravel(), noise[..., 1:].ravel())[0, 1]
    assert neighbours > 0.8
    np.testing.assert_array_equal(noise, make(0).numpy())
    assert not np.array_equal(noise, make(1).numpy())


def test_training_learns_to_remove_noise_and_the_map_finds_a_lesion():
    train, train_roi = healthy_slices(0, 48)
    val, val_roi = healthy_slices(1, 8)
    settings = DaeSettings(**{**SMALL.to_dict(), "epochs": 12})
    model, history = train_dae(train, train_roi, val, val_roi, settings, seed=0, progress=QUIET)
    assert list(history["epoch"]) == list(range(1, 13))
    # The noise alone costs about 0.4**2 * roi fraction in MSE; the network removes most of it.
    assert history["val_mse"].min() < 0.5 * history["val_mse"].iloc[0]

    test, roi = healthy_slices(2, 6)
    lesion = np.zeros_like(roi)
    lesion[:, 12:19, 12:19] = True
    test[lesion] = 0.95  # a bright blob, brighter than any healthy tissue
    residual = np.abs(restore(model, test) - test)
    inside = residual[lesion].mean()
    healthy = residual[roi & ~ndimage.binary_dilation(lesion, iterations=2)].mean()
    assert inside > 3 * healthy


def test_resumed_training_matches_uninterrupted(tmp_path):
    train, train_roi = healthy_slices(0, 16)
    val, val_roi = healthy_slices(1, 4)
    three = DaeSettings(**{**SMALL.to_dict(), "epochs": 3})
    two = DaeSettings(**{**SMALL.to_dict(), "epochs": 2})

    straight, straight_history = train_dae(
        train, train_roi, val, val_roi, three, 5, tmp_path / "a", progress=QUIET
    )
    train_dae(train, train_roi, val, val_roi, two, 5, tmp_path / "b", progress=QUIET)
    messages = []
    resumed, resumed_history = train_dae(
        train, train_roi, val, val_roi, three, 5, tmp_path / "b", progress=messages.append
    )
    assert any("resuming after epoch 2" in m for m in messages)
    assert straight_history.equals(resumed_history)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == [CHECKPOINT_NAME]
    other_seed = DaeSettings(**{**SMALL.to_dict(), "epochs": 3})
    with pytest.raises(ValueError, match="other settings or seed"):
        train_dae(train, train_roi, val, val_roi, other_seed, 6, tmp_path / "b", progress=QUIET)


def test_save_load_round_trip_and_settings_checks(tmp_path):
    torch.manual_seed(0)
    model = build_dae(SMALL)
    slices, _ = healthy_slices(3, 3)
    save_dae(tmp_path / "dae.pt", model, SMALL, meta={"note": "x"})
    loaded, settings, meta = load_dae(tmp_path / "dae.pt")
    assert settings == SMALL and meta == {"note": "x"}
    np.testing.assert_array_equal(restore(loaded, slices), restore(model.eval(), slices))
    with pytest.raises(ValueError, match="noise_sdt"):
        DaeSettings.from_dict({"noise_sdt": 0.2})
    with pytest.raises(ValueError, match="divisible"):
        restore(build_dae(DaeSettings(depth=3)), np.zeros((1, 20, 20), np.float32))


@pytest.mark.parametrize(
    ("n_train", "max_steps", "steps", "epochs"),
    # 10 slices in batches of 8: 8 and 2, so 2 steps an epoch; 9: the batch of one is skipped.
    [(10, None, 4, [1, 2]), (10, 3, 3, [1, 2]), (10, 1, 1, [1]), (9, None, 2, [1, 2])],
)
def test_planned_steps_are_the_steps_training_takes(n_train, max_steps, steps, epochs):
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from arepas.dae import planned_steps

    settings = DaeSettings(**{**SMALL.to_dict(), "epochs": 2, "max_steps": max_steps})
    train, train_roi = healthy_slices(0, n_train)
    val, val_roi = healthy_slices(1, 3)
    calls, messages = [], []
    handle = register_optimizer_step_post_hook(lambda *_: calls.append(1))
    try:
        _, history = train_dae(train, train_roi, val, val_roi, settings, seed=0,
                               progress=messages.append)
    finally:
        handle.remove()
    assert planned_steps(settings, n_train) == len(calls) == steps
    assert history["epoch"].tolist() == epochs and history["val_mse"].notna().all()
    step_lines = [m for m in messages if m.startswith("dae: step ")]
    assert len(step_lines) == len(epochs)


def test_a_capped_run_continues_exactly_under_a_larger_budget(tmp_path):
    train, train_roi = healthy_slices(0, 16)
    val, val_roi = healthy_slices(1, 4)
    three = DaeSettings(**{**SMALL.to_dict(), "epochs": 3})
    capped = DaeSettings(**{**three.to_dict(), "max_steps": 5})  # 2 steps an epoch
    train_dae(train, train_roi, val, val_roi, capped, 5, tmp_path / "b", progress=QUIET)
    straight, straight_history = train_dae(
        train, train_roi, val, val_roi, three, 5, tmp_path / "a", progress=QUIET
    )
    messages = []
    resumed, resumed_history = train_dae(
        train, train_roi, val, val_roi, three, 5, tmp_path / "b", progress=messages.append
    )
    assert messages[0] == "dae: resuming before epoch 3, which max_steps cut short at step 5"
    assert straight_history.equals(resumed_history)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0)
