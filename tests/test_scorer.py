from contextlib import contextmanager

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import ndimage
from torch.optim.optimizer import register_optimizer_step_post_hook

from arepas.scorer import (
    ScorerSettings,
    SiameseScorer,
    StalledScorerError,
    build_siamese,
    contrastive_loss,
    dense_patch_scores,
    dense_patch_scores_batch,
    keep_mined_pairs,
    load_mined_pairs,
    load_scorer,
    mine_hard_pairs,
    mining_disk_bytes,
    mining_inputs,
    mining_plan,
    mining_samples,
    patch_scores_at,
    reconstruct_for_mining,
    sampled_patch_scores,
    save_scorer,
    train_scorer,
)
from arepas.stacks import StackArray

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


def scrambled_model(
    patch_size: int, real: np.ndarray, recon: np.ndarray, architecture: str = "reference"
) -> SiameseScorer:
    """A random network with non-trivial input statistics and a head calibrated to the data,
    so that its scores spread over (0, 1) instead of sitting at one value."""
    torch.manual_seed(patch_size)
    model = SiameseScorer(patch_size, 10, architecture)
    p = patch_size
    rows = range(0, real.shape[-2] - p + 1, 3)
    cols = range(0, real.shape[-1] - p + 1, 3)
    a = torch.as_tensor(
        np.stack([r[y : y + p, x : x + p] for r in real for y in rows for x in cols])
    )
    b = torch.as_tensor(
        np.stack([r[y : y + p, x : x + p] for r in recon for y in rows for x in cols])
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
    # The reference implementation's choices are the defaults.
    assert (s.architecture, s.loss, s.warmup_rule, s.stall_accuracy) == (
        "reference",
        "reference",
        "last_batch",
        None,
    )
    assert (s.mining_source, s.mining_region) == ("augmented", "slice")
    assert ScorerSettings.from_dict({"epochs": 3}).epochs == 3
    with pytest.raises(ValueError, match="unknown scorer setting.*'epoch'"):
        ScorerSettings.from_dict({"epoch": 3})
    with pytest.raises(ValueError, match="too small for the unpadded network.*smallest.*13"):
        ScorerSettings(patch_size=8, architecture="unpadded")
    assert ScorerSettings(patch_size=8).padding == 2  # the padded network embeds 8x8 patches
    with pytest.raises(ValueError, match="architecture='padded' is not one of"):
        ScorerSettings(architecture="padded")


class ReferenceSiamese(torch.nn.Module):
    """The reference Siamese network as model_siamese.py (github.com/cirmuw/arepas) builds it,
    written out layer by layer, independently of arepas.scorer."""

    def __init__(self) -> None:
        super().__init__()
        self.bn0 = torch.nn.BatchNorm2d(1)
        self.conv1 = torch.nn.Conv2d(1, 32, 4, padding=2)
        self.conv2 = torch.nn.Conv2d(32, 64, 4, padding=2)
        self.fc = torch.nn.Linear(1024, 10)
        self.bn = torch.nn.BatchNorm1d(1)
        self.out = torch.nn.Linear(1, 1)

    def embed(self, x):
        x = torch.nn.functional.avg_pool2d(torch.tanh(self.conv1(self.bn0(x))), 2)
        x = torch.nn.functional.avg_pool2d(torch.tanh(self.conv2(x)), 2)
        return torch.tanh(self.fc(torch.flatten(x, 1)))

    def forward(self, a, b):
        d = torch.sqrt(
            torch.clamp(((self.embed(a) - self.embed(b)) ** 2).sum(1, keepdim=True), 1e-12)
        )
        return torch.sigmoid(self.out(self.bn(d)))[:, 0]


def test_default_network_is_the_reference_network():
    model = build_siamese(ScorerSettings())
    assert [tuple(c.weight.shape) for c in model.convs] == [(32, 1, 4, 4), (64, 32, 4, 4)]
    assert [c.padding for c in model.convs] == [(2, 2), (2, 2)]
    assert tuple(model.fc.weight.shape) == (10, 1024)
    reference = ReferenceSiamese()
    mine = model.state_dict()
    reference.load_state_dict(
        dict(
            zip(reference.state_dict(), (mine[k] for k in mine), strict=True),
        )
    )
    a, b = torch.randn(64, 1, 16, 16), torch.randn(64, 1, 16, 16) * 0.5
    # Training mode (batch statistics, running averages with momentum 0.1) and eval mode agree.
    for train in (True, False):
        model.train(train)
        reference.train(train)
        torch.testing.assert_close(model(a, b), reference(a, b), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model.input_norm.running_mean, reference.bn0.running_mean)
    # The head starts at PyTorch's default initialisation, not a hand-set slope.
    torch.manual_seed(3)
    head = build_siamese(ScorerSettings()).head_linear
    torch.manual_seed(3)
    default = torch.nn.Linear(1, 1)
    assert head.weight.item() != 1.0
    torch.manual_seed(3)
    fresh = build_siamese(ScorerSettings())
    assert fresh.head_linear.weight.item() == head.weight.item()
    assert default.weight.shape == head.weight.shape


def test_unpadded_option_sees_only_the_top_left_of_a_patch():
    model = build_siamese(ScorerSettings(architecture="unpadded")).eval()
    assert tuple(model.fc.weight.shape) == (10, 64)
    a = torch.randn(4, 1, 16, 16)
    b = a.clone()
    b[..., 13:, :] = 5.0  # outside the top-left 13x13 window
    torch.testing.assert_close(model.embed(a), model.embed(b))
    padded = build_siamese(ScorerSettings()).eval()
    assert not torch.allclose(padded.embed(a), padded.embed(b))


def test_reference_contrastive_loss_on_hand_computed_values():
    p = torch.tensor([0.2, 0.9, 0.3, 1.0])
    y = torch.tensor([0.0, 0.0, 1.0, 1.0])
    # (1-y) p^2 + y max(0, 1 - p)^2: 0.04, 0.81, 0.49, 0
    expected = (0.04 + 0.81 + 0.49 + 0.0) / 4
    assert contrastive_loss(p, y, 1.0).item() == pytest.approx(expected)


def test_reference_loss_trains_embedding_and_head_end_to_end():
    from arepas.scorer import _batch_loss

    settings = ScorerSettings()
    model = build_siamese(settings).train()
    a, b = torch.randn(32, 1, 16, 16), torch.randn(32, 1, 16, 16)
    y = (torch.arange(32) % 2).float()
    loss, score = _batch_loss(model, a, b, y, settings)
    manual = model(a, b)
    torch.testing.assert_close(score, manual)
    torch.testing.assert_close(loss, contrastive_loss(manual, y, 1.0))
    loss.backward()
    assert model.convs[0].weight.grad.abs().sum() > 0
    assert model.head_linear.weight.grad.abs().sum() > 0
    # Ours: the head's BCE does not reach the embedding (detached distance).
    ours = ScorerSettings(loss="detached_head")
    model = build_siamese(ours).train()
    assert model.head_linear.weight.item() == 1.0
    from arepas.scorer import _pair_distance

    loss, _ = _batch_loss(model, a, b, y, ours)
    distance = _pair_distance(*model.embed(torch.cat([a, b])).split(32))
    assert loss.item() > contrastive_loss(distance, y, 1.0).item()


@pytest.mark.parametrize("architecture", ["reference", "unpadded"])
@pytest.mark.parametrize(("patch_size", "stride", "size"), [(16, 1, 40), (16, 4, 44), (20, 3, 45)])
def test_dense_scores_equal_network_on_cut_out_patches(patch_size, stride, size, architecture):
    rng = np.random.default_rng(1)
    real = rng.uniform(-1, 1, (2, size, size)).astype(np.float32)
    recon = np.clip(real + rng.normal(0, 0.4, real.shape), -1, 1).astype(np.float32)
    model = scrambled_model(patch_size, real, recon, architecture)

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


@pytest.mark.parametrize("architecture", ["reference", "unpadded"])
def test_sampled_scores_are_network_outputs_at_their_positions(architecture):
    rng = np.random.default_rng(2)
    real = rng.uniform(-1, 1, (48, 52)).astype(np.float32)
    recon = np.clip(real + rng.normal(0, 0.4, real.shape), -1, 1).astype(np.float32)
    model = scrambled_model(16, real[None], recon[None], architecture)
    positions, scores = sampled_patch_scores(model, real, recon, 500, np.random.default_rng(0))
    assert positions.shape == (500, 2) and scores.shape == (500,)
    assert positions.min() >= 0 and positions[:, 0].max() <= 48 - 16
    # Drawn as the reference draws them: all rows, then all columns, with replacement.
    check = np.random.default_rng(0)
    np.testing.assert_array_equal(positions[:, 0], check.integers(0, 33, 500))
    np.testing.assert_array_equal(positions[:, 1], check.integers(0, 37, 500))
    expected = cut_out_scores(model, real, recon, positions[:, 0], positions[:, 1])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert scores.std() > 0.05


@pytest.mark.parametrize("patch_size", [16, 9, 6])
def test_shared_padded_scoring_equals_the_network_for_odd_sizes(patch_size):
    rng = np.random.default_rng(patch_size)
    real = rng.uniform(-1, 1, (31, 29)).astype(np.float32)
    recon = rng.uniform(-1, 1, (31, 29)).astype(np.float32)
    model = scrambled_model(patch_size, real[None], recon[None])
    positions = np.array([[0, 0], [31 - patch_size, 29 - patch_size], [3, 7], [3, 7], [10, 1]])
    scores = patch_scores_at(model, real, recon, positions)
    expected = cut_out_scores(model, real, recon, positions[:, 0], positions[:, 1])
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    with pytest.raises(ValueError, match="outside"):
        patch_scores_at(model, real, recon, np.array([[31 - patch_size + 1, 0]]))


def mined_example(roi=None, seed=0):
    rng = np.random.default_rng(seed)
    real = smooth_slices(rng, 30)
    recon = imperfect_reconstruction(rng, real)
    real, recon = real[::3], recon[::3]
    pairs = mine_hard_pairs(real, recon, ScorerSettings(), np.random.default_rng(7), roi=roi)
    return real, recon, pairs


def test_mining_keeps_exactly_the_top_decile():
    _, _, pairs = mined_example()
    mse = pairs["mined_mse"]
    # 10 slices, 256 patches each.
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
    assert set(np.unique(pos_a[:, 0])) <= set(range(10))
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
    roi = np.zeros((10, 64, 64), dtype=bool)
    roi[:, 10:40, 20:50] = True
    _, _, pairs = mined_example(roi=roi)
    centres = pairs["positions_a"][:, 1:] + 8
    assert roi[pairs["positions_a"][:, 0], centres[:, 0], centres[:, 1]].all()
    _, _, again = mined_example(roi=roi)
    np.testing.assert_array_equal(pairs["patches_a"], again["patches_a"])
    np.testing.assert_array_equal(pairs["positions_a"], again["positions_a"])


def test_mining_inputs_are_every_third_augmented_training_sample():
    slices = np.arange(6 * 4 * 4, dtype=np.float32).reshape(6, 4, 4)
    # A stand-in for the translator's training set: 3 augmented copies per slice, no clean one.
    aug_inputs = np.repeat(slices, 3, axis=0) + np.tile([100.0, 200.0, 300.0], 6)[:, None, None]
    aug_targets = np.repeat(slices, 3, axis=0)
    calls = []

    def clean(s):
        calls.append(len(s))
        return -s

    edges, targets, slice_of = mining_inputs(
        slices, ScorerSettings(), lambda: (aug_inputs, aug_targets), clean
    )
    np.testing.assert_array_equal(slice_of, np.arange(6))
    np.testing.assert_array_equal(targets, slices)
    np.testing.assert_array_equal(edges, slices + 100.0)  # each slice once, first copy
    assert calls == []
    edges, targets, slice_of = mining_inputs(
        slices,
        ScorerSettings(mining_source="unaugmented_edges"),
        lambda: (aug_inputs, aug_targets),
        clean,
    )
    np.testing.assert_array_equal(slice_of, [0, 3])
    np.testing.assert_array_equal(edges, -slices[[0, 3]])
    # Given the set's size, only the mined pairs are asked for, and the result is the same.
    asked = []

    def some(numbers):
        asked.append(list(numbers))
        return aug_inputs[numbers], aug_targets[numbers]

    edges, targets, slice_of = mining_inputs(slices, ScorerSettings(), some, clean, pair_count=18)
    assert asked == [[0, 3, 6, 9, 12, 15]]
    np.testing.assert_array_equal(slice_of, np.arange(6))
    np.testing.assert_array_equal(edges, slices + 100.0)
    np.testing.assert_array_equal(targets, slices)


def random_label_pairs(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (n, 16, 16)).astype(np.float32)
    b = rng.uniform(-1, 1, (n, 16, 16)).astype(np.float32)
    labels = rng.integers(0, 2, n).astype(np.float32)
    return a, b, labels


@pytest.mark.parametrize("rule", ["last_batch", "epoch"])
def test_stall_detection_when_no_try_passes_warm_up(rule):
    a, b, labels = random_label_pairs(1000)
    settings = ScorerSettings(max_restarts=3, warmup_rule=rule)
    messages = []
    with pytest.raises(StalledScorerError, match="no try of 3.*best seen") as info:
        train_scorer(a, b, labels, settings, seed=0, progress=messages.append)
    history = info.value.history
    assert list(history["try"]) == [0, 1, 2]
    assert (history["warmup_acc"] <= 0.7).all()
    if rule == "epoch":
        np.testing.assert_array_equal(history["warmup_acc"], history["train_acc"])
    assert len(without_step_lines(messages)) == 3


def without_step_lines(messages: list[str]) -> list[str]:
    """The messages other than the progress lines with an expected end (arepas.progress)."""
    return [m for m in messages if not m.startswith("scorer: step ")]


def test_warm_up_judges_the_last_batch_by_default():
    from arepas.scorer import _EpochResult, _passes_warmup

    result = _EpochResult(loss=0.1, accuracy=0.6, last_batch_accuracy=0.75)
    assert _passes_warmup(result, ScorerSettings()) == (True, 0.75)
    assert _passes_warmup(result, ScorerSettings(warmup_rule="epoch")) == (False, 0.6)
    # Strictly above the bar, as in the reference.
    edge = _EpochResult(loss=0.1, accuracy=0.7, last_batch_accuracy=0.7)
    assert not _passes_warmup(edge, ScorerSettings())[0]
    assert _passes_warmup(edge, ScorerSettings(warmup_rule="epoch"))[0]


def test_stall_detection_on_held_out_accuracy():
    # Warm-up disabled so the try proceeds; random labels cannot generalise to held-out pairs.
    a, b, labels = random_label_pairs(2500, seed=1)
    settings = ScorerSettings(warmup_accuracy=0.0, epochs=2, stall_accuracy=0.55)
    with pytest.raises(StalledScorerError, match="held-out accuracy") as info:
        train_scorer(a, b, labels, settings, seed=0, progress=lambda _: None)
    assert info.value.history["heldout_acc"].max() <= 0.55
    assert list(info.value.history["epoch"]) == [0, 1, 2]
    # Without the stall rule (reference), the same run returns its best model.
    model, history = train_scorer(
        a, b, labels, ScorerSettings(warmup_accuracy=0.0, epochs=1), 0, lambda _: None
    )
    assert history["heldout_acc"].max() <= 0.6 and not model.training


def test_training_learns_pairs_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    real = smooth_slices(rng, 30)
    recon = imperfect_reconstruction(rng, real)
    settings = ScorerSettings(slice_step=1, epochs=3, batch_size=256)
    pairs = mine_hard_pairs(real, recon, settings, rng)
    model, history = train_scorer(
        pairs["patches_a"], pairs["patches_b"], pairs["labels"], settings, 0, lambda _: None
    )
    assert list(history.columns) == [
        "try",
        "epoch",
        "train_loss",
        "train_acc",
        "heldout_acc",
        "warmup_acc",
    ]
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


def test_scorer_files_from_before_the_reference_defaults_load_as_ours(tmp_path):
    from arepas.io import save_torch

    legacy = ScorerSettings(architecture="unpadded", loss="detached_head")
    model = build_siamese(legacy)
    old_settings = {
        k: v
        for k, v in legacy.to_dict().items()
        if k
        not in (
            "architecture",
            "loss",
            "warmup_rule",
            "stall_accuracy",
            "mining_source",
            "mining_region",
        )
    }
    path = tmp_path / "old.pt"
    save_torch(
        {"state_dict": model.state_dict(), "settings": old_settings, "meta_json": "{}"}, path
    )
    loaded, settings, _ = load_scorer(path)
    assert (settings.architecture, settings.loss, settings.mining_source) == (
        "unpadded",
        "detached_head",
        "unaugmented_edges",
    )
    assert settings.stall_accuracy == 0.55


@pytest.mark.parametrize("with_roi", [False, True])
def test_mining_on_disk_in_chunks_gives_the_pairs_of_mining_in_memory(tmp_path, with_roi):
    rng = np.random.default_rng(4)
    real = smooth_slices(rng, 9, size=32)
    recon = imperfect_reconstruction(rng, real)
    roi = None
    if with_roi:
        roi = np.zeros(real.shape, dtype=bool)
        roi[:, 4:28, 6:30] = True
        roi[2] = False  # a slice without a candidate place
    settings = ScorerSettings(patch_size=6, patches_per_slice=40)
    whole = mine_hard_pairs(real, recon, settings, np.random.default_rng(1), roi=roi)
    on_disk = mine_hard_pairs(
        real, recon, settings, np.random.default_rng(1), roi=roi, folder=tmp_path, chunk=2
    )
    assert isinstance(on_disk["patches_a"], StackArray)
    for key, value in whole.items():
        np.testing.assert_array_equal(np.asarray(on_disk[key]), value, err_msg=key)
    # Training reads the pairs a batch at a time from disk and learns exactly the same.
    small = ScorerSettings(patch_size=6, epochs=2, batch_size=64, warmup_accuracy=0.0)
    models = []
    for pairs in (whole, on_disk):
        model, history = train_scorer(
            pairs["patches_a"], pairs["patches_b"], pairs["labels"], small, 2, lambda _: None
        )
        models.append((model.state_dict(), history))
    pd.testing.assert_frame_equal(models[0][1], models[1][1])
    for name, weights in models[0][0].items():
        assert torch.equal(weights, models[1][0][name]), name


def test_reconstruction_for_mining_is_written_a_chunk_at_a_time(tmp_path):
    slices = np.arange(40 * 8 * 8, dtype=np.float32).reshape(40, 8, 8) / 2560.0
    roi = slices > 0.5
    settings = ScorerSettings(patch_size=6, slice_step=3, mining_source="unaugmented_edges")
    picked, slice_of = mining_plan(len(slices), settings)
    np.testing.assert_array_equal(picked, np.arange(0, 40, 3))
    sizes = []

    def translate(inputs):
        sizes.append(len(inputs))
        return inputs * 2.0

    make_inputs = mining_samples(slices, settings, augmented=None, clean=lambda s: s + 1.0)
    targets, recon, mined_roi = reconstruct_for_mining(
        picked, slice_of, make_inputs, translate, tmp_path, roi=roi, chunk=5
    )
    assert sizes == [5, 5, 4]
    np.testing.assert_array_equal(targets[:], slices[picked])
    np.testing.assert_array_equal(recon[:], (slices[picked] + 1.0) * 2.0)
    np.testing.assert_array_equal(mined_roi[:], roi[picked])
    written = sum(path.stat().st_size for path in tmp_path.iterdir())
    assert mining_disk_bytes(len(picked), slices.shape[1:], settings) >= written - 3 * 128
    # The augmented source asks the translator's pair maker for every third pair alone.
    asked = []

    def pair_batch(numbers):
        asked.append(numbers.copy())
        return slices[numbers // 3], slices[numbers // 3]

    aug = ScorerSettings(patch_size=6, slice_step=3)
    picked, slice_of = mining_plan(len(slices), aug, pair_count=3 * len(slices))
    reconstruct_for_mining(
        picked, slice_of, mining_samples(slices, aug, pair_batch, None), translate,
        tmp_path / "aug", chunk=16,
    )
    np.testing.assert_array_equal(np.concatenate(asked), np.arange(0, 120, 3))
    assert [len(a) for a in asked] == [16, 16, 8]
    np.testing.assert_array_equal(slice_of, np.arange(40))
    # Samples the pair maker mirrors (augment_mirror) get their slice's ROI mirrored too.
    mirrored = np.arange(len(picked)) % 2 == 1
    upper = np.zeros_like(roi)
    upper[:, :3] = True
    _, _, mirrored_roi = reconstruct_for_mining(
        picked, slice_of, mining_samples(slices, aug, pair_batch, None), translate,
        tmp_path / "mirror", roi=upper, chunk=16, mirrored=mirrored,
    )
    np.testing.assert_array_equal(mirrored_roi[~mirrored], upper[slice_of][~mirrored])
    np.testing.assert_array_equal(mirrored_roi[mirrored], upper[slice_of][mirrored][:, ::-1])
    assert not mirrored_roi[mirrored][:, :3].any()


class _Killed(Exception):
    pass


def _kill_at(text: str, messages: list[str]):
    """A progress callback that stops training (as a killed job) at the first message holding
    `text`, after recording the messages before it."""

    def progress(message: str) -> None:
        if text in message:
            raise _Killed(message)
        messages.append(message)

    return progress


def learnable_pairs(n: int = 600, seed: int = 4):
    a, b, _ = random_label_pairs(n, seed=seed)
    gap = np.abs(a - b).mean(axis=(1, 2))
    return a, b, (gap > np.median(gap)).astype(np.float32)


def assert_same_model(first: torch.nn.Module, second: torch.nn.Module) -> None:
    for name, weights in first.state_dict().items():
        assert torch.equal(weights, second.state_dict()[name]), name


def test_killed_scorer_resumes_to_the_uninterrupted_result(tmp_path):
    a, b, labels = learnable_pairs()
    settings = ScorerSettings(warmup_accuracy=0.0, epochs=4, batch_size=64)
    straight, straight_history = train_scorer(a, b, labels, settings, 3, lambda _: None)

    folder = tmp_path / "checkpoint"
    with pytest.raises(_Killed):
        train_scorer(a, b, labels, settings, 3, _kill_at("epoch 3/4", []), checkpoint_dir=folder)
    messages = []
    resumed, resumed_history = train_scorer(
        a, b, labels, settings, 3, messages.append, checkpoint_dir=folder
    )
    messages = without_step_lines(messages)
    assert messages[0] == "scorer: resuming try 1 after epoch 2"
    assert [m.split(":")[0] for m in messages[1:]] == ["scorer epoch 3/4", "scorer epoch 4/4"]
    pd.testing.assert_frame_equal(resumed_history, straight_history)
    assert_same_model(resumed, straight)

    # A longer run resumes after the last epoch; another setting is refused, naming it.
    longer = ScorerSettings(**{**settings.to_dict(), "epochs": 5})
    messages = []
    train_scorer(a, b, labels, longer, 3, messages.append, checkpoint_dir=folder)
    messages = without_step_lines(messages)
    assert messages[0] == "scorer: resuming try 1 after epoch 4" and len(messages) == 2
    other = ScorerSettings(**{**settings.to_dict(), "lr": 0.01})
    with pytest.raises(ValueError, match="cannot resume .*lr: checkpoint 0.001 vs now 0.01"):
        train_scorer(a, b, labels, other, 3, lambda _: None, checkpoint_dir=folder)


def test_scorer_killed_between_restarts_resumes_at_the_next_try(tmp_path):
    a, b, labels = random_label_pairs(1000)
    settings = ScorerSettings(max_restarts=3)
    with pytest.raises(StalledScorerError) as straight:
        train_scorer(a, b, labels, settings, 0, lambda _: None)

    folder = tmp_path / "checkpoint"
    with pytest.raises(_Killed):
        # Try 2's warm-up fails too; the kill comes before its checkpoint is written.
        train_scorer(a, b, labels, settings, 0, _kill_at("try 2/3", []), checkpoint_dir=folder)
    messages = []
    with pytest.raises(StalledScorerError) as resumed:
        train_scorer(a, b, labels, settings, 0, messages.append, checkpoint_dir=folder)
    messages = without_step_lines(messages)
    assert messages[0] == "scorer: resuming after the failed warm-up of try 1"
    assert [m.split(":")[0] for m in messages[1:]] == ["scorer try 2/3", "scorer try 3/3"]
    pd.testing.assert_frame_equal(resumed.value.history, straight.value.history)
    # The best warm-up model kept for a flagged stall is the same one.
    assert_same_model(resumed.value.model, straight.value.model)


def test_finished_mining_is_found_again_and_unfinished_mining_is_not(tmp_path):
    rng = np.random.default_rng(4)
    real = smooth_slices(rng, 6, size=32)
    recon = imperfect_reconstruction(rng, real)
    settings = ScorerSettings(patch_size=6, patches_per_slice=40)
    mined = mine_hard_pairs(real, recon, settings, np.random.default_rng(1), folder=tmp_path)
    # Pair files without the manifest are an unfinished mining: mined again, never trusted.
    assert load_mined_pairs(tmp_path) is None
    keep_mined_pairs(tmp_path, mined)
    found = load_mined_pairs(tmp_path)
    for key in ("patches_a", "patches_b", "positions_a", "positions_b", "labels"):
        np.testing.assert_array_equal(np.asarray(found[key]), np.asarray(mined[key]), key)
    assert float(found["threshold"]) == pytest.approx(float(mined["threshold"]))


def test_mining_from_the_translator_matches_mining_its_whole_training_set_in_memory(tmp_path):
    from arepas import mining, translator

    rng = np.random.default_rng(6)
    real = smooth_slices(rng, 6, size=32).astype(np.float32)
    roi = np.zeros(real.shape, dtype=bool)
    roi[:, 4:28, 4:28] = True
    tiny = translator.TranslatorSettings(base_channels=4, n_blocks=1, disc_channels=4)
    torch.manual_seed(0)
    generator = translator.build_generator(tiny).eval()
    settings = ScorerSettings(patch_size=6, patches_per_slice=30, mining_region="roi")
    pairs, reconstructed = mining.mine_translator_pairs(
        real, roi, generator, tiny, settings, 3, tmp_path / "work"
    )
    # The same pairs by the plain route: the whole augmented set in memory, reconstructed at once.
    edges, targets, slice_of = mining_inputs(
        real,
        settings,
        augmented=lambda: translator.training_pairs(real, tiny, 3),
        clean=lambda slices: translator.edges_for(tiny, slices),
    )
    mirrored = translator.mirrored_pairs(tiny, np.arange(len(edges)) * settings.slice_step, 3)
    mined_roi = np.where(mirrored[:, None, None], roi[slice_of][:, :, ::-1], roi[slice_of])
    expected = mine_hard_pairs(
        targets,
        translator.translate(generator, edges),
        settings,
        np.random.default_rng(3),
        roi=mined_roi,
    )
    assert reconstructed == len(targets)
    for key, value in expected.items():
        np.testing.assert_allclose(np.asarray(pairs[key]), value, atol=1e-6, err_msg=key)
    # The pairs stay for training (and a resumed job); the reconstructions do not.
    assert load_mined_pairs(tmp_path / "work" / "pairs") is not None
    assert not (tmp_path / "work" / "mining").exists()


@contextmanager
def counted_optimiser_steps():
    """The number of optimiser steps taken inside the block, any optimiser: len(calls)."""
    calls = []
    handle = register_optimizer_step_post_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        handle.remove()


@pytest.mark.parametrize(
    ("n_pairs", "max_steps", "steps", "epochs"),
    # 600 pairs: 480 not held out, 7 batches of 64 and one of 32, so 8 steps an epoch; 561
    # pairs: 449, 7 batches of 64 and one of 1 that batch norm skips, so 7 steps.
    [(600, None, 8 + 24, [0, 1, 2, 3]), (600, 13, 8 + 13, [0, 1, 2]),
     (600, 16, 8 + 16, [0, 1, 2]), (600, 1, 8 + 1, [0, 1]), (561, None, 7 + 21, [0, 1, 2, 3])],
)
def test_planned_steps_are_the_steps_training_takes(n_pairs, max_steps, steps, epochs):
    from arepas import scorer

    a, b, labels = learnable_pairs(n_pairs)
    settings = ScorerSettings(warmup_accuracy=0.0, epochs=3, batch_size=64, max_steps=max_steps)
    messages = []
    with counted_optimiser_steps() as calls:
        _, history = train_scorer(a, b, labels, settings, 3, messages.append)
    assert scorer.planned_steps_for_pairs(settings, n_pairs) == len(calls) == steps
    assert history["epoch"].tolist() == epochs
    # Every epoch ends with a progress line, the last one at the plan's end.
    step_lines = [m for m in messages if m.startswith("scorer: step ")]
    assert len(step_lines) == len(epochs)
    assert step_lines[-1].startswith(f"scorer: step {steps}/{steps} (100.0 %)")


def test_restarts_add_a_warm_up_epoch_each_to_the_plan():
    a, b, labels = random_label_pairs(1000)
    messages = []
    with counted_optimiser_steps() as calls, pytest.raises(StalledScorerError):
        train_scorer(a, b, labels, ScorerSettings(max_restarts=3), 0, messages.append)
    # 800 pairs not held out: one step an epoch; the plan grows by one epoch per failed try.
    assert len(calls) == 3
    step_lines = [m.split(" (")[0] for m in messages if m.startswith("scorer: step ")]
    assert step_lines == ["scorer: step 1/11", "scorer: step 2/12", "scorer: step 3/13"]


@pytest.mark.parametrize(
    ("mining_source", "patches_per_slice", "n_slices"),
    # augmented: 5 slices x 3 pairs, every 3rd: 5 samples; clean: 7 slices, every 3rd: 3;
    # 300 patches a slice but 20 x 20 slices have only 15 x 15 places for 6 x 6 patches.
    [("augmented", 40, 5), ("unaugmented_edges", 40, 7), ("augmented", 300, 5)],
)
def test_planned_steps_from_slices_are_the_steps_of_mining_and_training(
    mining_source, patches_per_slice, n_slices
):
    from arepas import scorer

    settings = ScorerSettings(
        patch_size=6, patches_per_slice=patches_per_slice, mining_source=mining_source,
        warmup_accuracy=0.0, epochs=2, batch_size=8, max_steps=5,
    )
    picked, _ = mining_plan(n_slices, settings, n_slices * 3)
    rng = np.random.default_rng(2)
    real = smooth_slices(rng, len(picked), size=20)
    mined = mine_hard_pairs(real, imperfect_reconstruction(rng, real), settings,
                            np.random.default_rng(1))
    n_pairs = len(mined["labels"])
    assert scorer.expected_pair_count(settings, n_slices, 3, slice_side=20) == n_pairs
    with counted_optimiser_steps() as calls:
        train_scorer(mined["patches_a"], mined["patches_b"], mined["labels"], settings, 1,
                     lambda _: None)
    assert scorer.planned_steps(settings, n_slices, 3, slice_side=20) == len(calls)


def test_a_capped_scorer_is_finished_and_a_larger_budget_continues_it_exactly(tmp_path):
    a, b, labels = learnable_pairs()
    # 8 steps an epoch: 20 steps stop within epoch 3.
    settings = ScorerSettings(warmup_accuracy=0.0, epochs=4, batch_size=64)
    capped = ScorerSettings(**{**settings.to_dict(), "max_steps": 20})
    folder = tmp_path / "checkpoint"
    first, first_history = train_scorer(a, b, labels, capped, 3, lambda _: None,
                                        checkpoint_dir=folder)
    assert first_history["epoch"].tolist() == [0, 1, 2, 3]
    messages = []
    again, again_history = train_scorer(a, b, labels, capped, 3, messages.append,
                                        checkpoint_dir=folder)
    assert messages == ["scorer: resuming try 1 after epoch 3"]
    pd.testing.assert_frame_equal(again_history, first_history)
    assert_same_model(again, first)
    # A larger budget trains the cut epoch again from its start: the run of that budget.
    straight, straight_history = train_scorer(a, b, labels, settings, 3, lambda _: None)
    messages = []
    resumed, resumed_history = train_scorer(a, b, labels, settings, 3, messages.append,
                                            checkpoint_dir=folder)
    assert messages[0] == (
        "scorer: resuming try 1 before epoch 3, which max_steps cut short at step 20"
    )
    pd.testing.assert_frame_equal(resumed_history, straight_history)
    assert_same_model(resumed, straight)
    pd.testing.assert_frame_equal(first_history.iloc[:3], straight_history.iloc[:3])
