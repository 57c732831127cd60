import numpy as np
import pytest
import torch
from scipy import ndimage

from arepas.scorer import (
    ScorerSettings,
    SiameseScorer,
    StalledScorerError,
    build_siamese,
    dense_patch_scores,
    dense_patch_scores_batch,
    load_scorer,
    mine_hard_pairs,
    sampled_patch_scores,
    save_scorer,
    train_scorer,
)

torch.set_num_threads(1)


def smooth_slices(rng: np.random.Generator, n: int, size: int = 64) -> np.ndarray:
    field = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), sigma=(0, 2, 2))
    return (0.8 * field / np.abs(field).max(axis=(1, 2), keepdims=True)).astype(np.float32)


def imperfect_reconstruction(rng: np.random.Generator, real: np.ndarray) -> np.ndarray:
    """Same structure, pixel-level error: blur, a smooth intensity bias and noise."""
    bias = ndimage.gaussian_filter(rng.normal(size=real.shape), sigma=(0, 8, 8))
    bias = 0.25 * bias / np.abs(bias).max(axis=(1, 2), keepdims=True)
    recon = ndimage.gaussian_filter(real, sigma=(0, 1, 1)) + bias + rng.normal(0, 0.05, real.shape)
    return np.clip(recon, -1, 1).astype(np.float32)


def scrambled_model(patch_size: int, real: np.ndarray, recon: np.ndarray) -> SiameseScorer:
    """A random network with non-trivial input statistics and a head calibrated to the data,
    so that its scores spread over (0, 1) instead of sitting at one value."""
    torch.manual_seed(patch_size)
    model = SiameseScorer(patch_size, 10)
    p = patch_size
    corners = range(0, real.shape[-1] - p + 1, 3)
    a = torch.as_tensor(
        np.stack([r[y : y + p, x : x + p] for r in real for y in corners for x in corners])
    )
    b = torch.as_tensor(
        np.stack([r[y : y + p, x : x + p] for r in recon for y in corners for x in corners])
    )
    a, b = a[:, None], b[:, None]
    with torch.no_grad():
        model.input_norm.running_mean.fill_(0.2)
        model.input_norm.running_var.fill_(0.4)
        model.input_norm.weight.fill_(1.5)
        model.eval()
        distance = model.distance(a, b)
        model.head_norm.running_mean.fill_(float(distance.mean()))
        model.head_norm.running_var.fill_(float(distance.var()))
        model.head_linear.weight.fill_(1.5)
    return model


def cut_out_scores(model, real, recon, ys, xs):
    p = model.patch_size
    a = np.stack([real[y : y + p, x : x + p] for y, x in zip(ys, xs, strict=True)])
    b = np.stack([recon[y : y + p, x : x + p] for y, x in zip(ys, xs, strict=True)])
    with torch.no_grad():
        return model(torch.as_tensor(a)[:, None], torch.as_tensor(b)[:, None]).numpy()


def test_settings_defaults_and_unknown_keys():
    s = ScorerSettings.from_dict({})
    assert (s.patch_size, s.patches_per_slice, s.percentile, s.slice_step) == (16, 256, 90.0, 3)
    assert (s.lr, s.batch_size, s.epochs, s.holdout, s.warmup_accuracy, s.max_restarts) == (
        1e-3,
        1024,
        10,
        0.2,
        0.7,
        100,
    )
    assert ScorerSettings.from_dict({"epochs": 3}).epochs == 3
    with pytest.raises(ValueError, match="unknown scorer setting.*'epoch'"):
        ScorerSettings.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="too small"):
        ScorerSettings(patch_size=8)


@pytest.mark.parametrize(("patch_size", "stride", "size"), [(16, 1, 40), (16, 4, 44), (20, 3, 45)])
def test_dense_scores_equal_network_on_cut_out_patches(patch_size, stride, size):
    rng = np.random.default_rng(1)
    real = rng.uniform(-1, 1, (2, size, size)).astype(np.float32)
    recon = np.clip(real + rng.normal(0, 0.4, real.shape), -1, 1).astype(np.float32)
    model = scrambled_model(patch_size, real, recon)

    dense = dense_patch_scores_batch(model, real, recon, stride)
    corners = np.arange(0, size - patch_size + 1, stride)
    assert dense.shape == (2, corners.size, corners.size)
    ys, xs = (g.ravel() for g in np.meshgrid(corners, corners, indexing="ij"))
    for k in range(2):
        expected = cut_out_scores(model, real[k], recon[k], ys, xs).reshape(dense.shape[1:])
        np.testing.assert_allclose(dense[k], expected, atol=1e-5)
        single = dense_patch_scores(model, real[k], recon[k], stride)
        np.testing.assert_allclose(single, dense[k], atol=1e-6)
    # The comparison is only meaningful if the scores actually vary across positions.
    assert dense.std() > 0.05


def test_sampled_scores_are_network_outputs_at_their_positions():
    rng = np.random.default_rng(2)
    real = rng.uniform(-1, 1, (48, 48)).astype(np.float32)
    recon = np.clip(real + rng.normal(0, 0.4, real.shape), -1, 1).astype(np.float32)
    model = scrambled_model(16, real[None], recon[None])
    positions, scores = sampled_patch_scores(model, real, recon, 500, np.random.default_rng(0))
    assert positions.shape == (500, 2) and scores.shape == (500,)
    assert positions.min() >= 0 and positions.max() <= 48 - 16
    dense = dense_patch_scores(model, real, recon, 1)
    np.testing.assert_allclose(scores, dense[positions[:, 0], positions[:, 1]], atol=1e-5)


def mined_example(roi=None, seed=0):
    rng = np.random.default_rng(seed)
    real = smooth_slices(rng, 30)
    recon = imperfect_reconstruction(rng, real)
    pairs = mine_hard_pairs(real, recon, ScorerSettings(), np.random.default_rng(7), roi=roi)
    return real, recon, pairs


def test_mining_keeps_exactly_the_top_decile():
    _, _, pairs = mined_example()
    mse = pairs["mined_mse"]
    # Every 3rd of 30 slices, 256 patches each.
    assert mse.size == 10 * 256
    threshold = float(pairs["threshold"])
    assert threshold == pytest.approx(np.percentile(mse, 90.0))
    positives = pairs["labels"] == 0
    assert positives.sum() == (mse > threshold).sum() == 256
    assert (pairs["labels"] == 1).sum() == 256
    kept_mse = np.mean((pairs["patches_a"][positives] - pairs["patches_b"][positives]) ** 2, (1, 2))
    assert kept_mse.min() > threshold
    np.testing.assert_allclose(np.sort(kept_mse), np.sort(mse)[-256:], rtol=1e-5)


def test_positive_pairs_share_a_place_and_negatives_do_not():
    real, recon, pairs = mined_example()
    p = 16
    pos_a, pos_b, labels = pairs["positions_a"], pairs["positions_b"], pairs["labels"]
    assert set(np.unique(pos_a[:, 0])) <= set(range(0, 30, 3))
    for (s, y, x), patch in zip(pos_a, pairs["patches_a"], strict=True):
        np.testing.assert_array_equal(patch, real[s, y : y + p, x : x + p])
    for (s, y, x), patch in zip(pos_b, pairs["patches_b"], strict=True):
        np.testing.assert_array_equal(patch, recon[s, y : y + p, x : x + p])
    positives, negatives = labels == 0, labels == 1
    np.testing.assert_array_equal(pos_a[positives], pos_b[positives])
    assert np.all(np.any(pos_a[negatives] != pos_b[negatives], axis=1))
    # Negatives reuse the kept reconstructions and a reshuffle of the kept real patches.
    np.testing.assert_array_equal(pos_b[negatives], pos_b[positives])
    shuffled = {tuple(r) for r in pos_a[negatives]}
    assert shuffled == {tuple(r) for r in pos_a[positives]}


def test_mining_respects_roi_and_seed():
    roi = np.zeros((30, 64, 64), dtype=bool)
    roi[:, 10:40, 20:50] = True
    _, _, pairs = mined_example(roi=roi)
    centres = pairs["positions_a"][:, 1:] + 8
    assert roi[pairs["positions_a"][:, 0], centres[:, 0], centres[:, 1]].all()
    _, _, again = mined_example(roi=roi)
    np.testing.assert_array_equal(pairs["patches_a"], again["patches_a"])
    np.testing.assert_array_equal(pairs["positions_a"], again["positions_a"])


def random_label_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, 16, 16)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 2, n).astype(np.float32)
    return a, b, labels


def test_stall_detection_when_no_try_passes_warm_up():
    a, b, labels = random_label_pairs(1000)
    settings = ScorerSettings(max_restarts=3)
    messages = []
    with pytest.raises(StalledScorerError, match="no try of 3.*best seen") as info:
        train_scorer(a, b, labels, settings, seed=0, progress=messages.append)
    history = info.value.history
    assert list(history["try"]) == [0, 1, 2]
    assert (history["train_acc"] < 0.7).all()
    assert len(messages) == 3


def test_stall_detection_on_held_out_accuracy():
    # Warm-up disabled so the try proceeds; random labels cannot generalise to held-out pairs.
    a, b, labels = random_label_pairs(4000, seed=1)
    settings = ScorerSettings(warmup_accuracy=0.0, epochs=2)
    with pytest.raises(StalledScorerError, match="held-out accuracy") as info:
        train_scorer(a, b, labels, settings, seed=0, progress=lambda _: None)
    assert info.value.history["heldout_acc"].max() <= 0.55
    assert list(info.value.history["epoch"]) == [0, 1, 2]


def test_training_learns_pairs_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    real = smooth_slices(rng, 30)
    recon = imperfect_reconstruction(rng, real)
    settings = ScorerSettings(slice_step=1, epochs=3, batch_size=256)
    pairs = mine_hard_pairs(real, recon, settings, rng)
    model, history = train_scorer(
        pairs["patches_a"], pairs["patches_b"], pairs["labels"], settings, 0, lambda _: None
    )
    assert list(history.columns) == ["try", "epoch", "train_loss", "train_acc", "heldout_acc"]
    assert history["heldout_acc"].max() > 0.9
    assert not model.training

    path = tmp_path / "scorer" / "model.pt"
    save_scorer(path, model, settings, {"dataset": "toy", "heldout_acc": 0.9})
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.pt"]
    loaded, loaded_settings, meta = load_scorer(path)
    assert loaded_settings == settings
    assert meta == {"dataset": "toy", "heldout_acc": 0.9}
    np.testing.assert_array_equal(
        dense_patch_scores(model, real[0], recon[0], 2),
        dense_patch_scores(loaded, real[0], recon[0], 2),
    )


def test_training_is_deterministic_given_seed():
    a, b, labels = random_label_pairs(300, seed=4)
    labels = np.abs(a - b).mean(axis=(1, 2)) > np.median(np.abs(a - b).mean(axis=(1, 2)))
    labels = labels.astype(np.float32)
    settings = ScorerSettings(warmup_accuracy=0.0, epochs=1, batch_size=64)
    runs = []
    for _ in range(2):
        try:
            _, history = train_scorer(a, b, labels, settings, seed=5, progress=lambda _: None)
        except StalledScorerError as error:
            history = error.history
        runs.append(history)
    assert runs[0].equals(runs[1])


def test_build_siamese_shapes():
    model = build_siamese(ScorerSettings(embedding_dim=6)).eval()
    x = torch.zeros(5, 1, 16, 16)
    assert model.embed(x).shape == (5, 6)
    score = model(x, x + 0.5)
    assert score.shape == (5,) and torch.all((score > 0) & (score < 1))
