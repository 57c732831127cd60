import dataclasses
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from arepas import translator
from arepas.edges import edge_maps
from arepas.translator import (
    CHECKPOINT_NAME,
    HISTORY_COLUMNS,
    TranslatorSettings,
    VGG19Relu33,
    build_discriminator,
    build_generator,
    build_vgg19_features,
    edges_for,
    gradient_penalty,
    load_translator,
    save_translator,
    train_translator,
    training_pairs,
    translate,
)

torch.set_num_threads(1)

SIZE = 32
TINY = TranslatorSettings(
    base_channels=8, n_blocks=1, disc_channels=8, batch_size=4, epochs=3, num_threads=1
)
# What this project did before its defaults followed the reference implementation.
V0_OPTIONS = {
    "edge_detector": "skimage",
    "augment_keep_unaugmented": True,
    "swap_style": "clean_source",
    "gan_step": "discriminator_first",
    "init": "normal_0.02",
    "affine_norm": False,
    "perceptual": "feature_matching",
}


def assert_same_training(model_a, history_a, model_b, history_b) -> None:
    """Two trainings gave bit-identical histories (but their timings) and weights."""
    values = [c for c in HISTORY_COLUMNS if c != "seconds"]
    np.testing.assert_array_equal(history_a[values].to_numpy(), history_b[values].to_numpy())
    for (name, a), (_, b) in zip(
        model_a.state_dict().items(), model_b.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name


def shape_slices(n: int, seed: int) -> np.ndarray:
    """Discs and squares of random grey levels on a -1 background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    slices = np.full((n, SIZE, SIZE), -1.0, dtype=np.float32)
    for i in range(n):
        cy, cx = rng.uniform(10, 22, size=2)
        if i % 2:
            slices[i][np.hypot(yy - cy, xx - cx) <= rng.uniform(5, 10)] = rng.uniform(-0.3, 0.8)
        else:
            half = int(rng.integers(4, 9))
            top, left = int(cy) - half, int(cx) - half
            slices[i, top : top + 2 * half, left : left + 2 * half] = rng.uniform(-0.3, 0.8)
    return slices


def test_defaults_are_the_published_values():
    s = TranslatorSettings()
    assert (s.base_channels, s.n_downsampling, s.n_blocks, s.dropout) == (64, 2, 9, 0.5)
    assert s.disc_channels == 64
    assert (s.lr, s.betas, s.batch_size) == (2e-4, (0.5, 0.999), 8)
    assert (s.lambda_l1, s.lambda_perceptual, s.lambda_gp, s.real_label) == (100, 1, 1, 0.9)
    assert (s.augment_copies, s.augment_swaps) == (3, 20)
    assert (s.gan_step, s.init, s.perceptual) == ("reference", "default", "none")
    assert s.affine_norm is True
    assert (s.edge_detector, s.augment_keep_unaugmented, s.swap_style) == (
        "opencv", False, "reference"
    )


def test_from_dict_rejects_unknown_keys_and_normalises_betas():
    s = TranslatorSettings.from_dict({"n_blocks": 4, "betas": [0.5, 0.9]})
    assert s.n_blocks == 4 and s.betas == (0.5, 0.9)
    assert TranslatorSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="n_block"):
        TranslatorSettings.from_dict({"n_block": 4})
    with pytest.raises(ValueError, match="perceptual"):
        TranslatorSettings(perceptual="lpips")
    for name, bad in (
        ("gan_step", "generator_first"),
        ("init", "xavier"),
        ("edge_detector", "sobel"),
        ("swap_style", "random"),
        ("affine_norm", "false"),
        ("augment_keep_unaugmented", 1),
    ):
        with pytest.raises(ValueError, match=name):
            TranslatorSettings(**{name: bad})
    assert TranslatorSettings(**V0_OPTIONS).gan_step == "discriminator_first"
    with pytest.raises(ValueError, match="no training pairs"):
        TranslatorSettings(augment_copies=0)
    assert TranslatorSettings(augment_copies=0, augment_keep_unaugmented=True).augment_copies == 0


def test_generator_keeps_the_size_and_stays_in_range():
    torch.manual_seed(0)
    generator = build_generator(TINY).eval()
    edges = torch.where(torch.rand(3, 1, SIZE, SIZE) > 0.9, 1.0, -1.0)
    with torch.no_grad():
        out = generator(edges)
        loud = generator(edges * 1000)
    assert out.shape == (3, 1, SIZE, SIZE)
    assert out.abs().max() <= 1.0 and loud.abs().max() <= 1.0
    assert out.std() > 0


def test_published_generator_layout():
    generator = build_generator(TranslatorSettings())
    convs = [m for m in generator.modules() if isinstance(m, torch.nn.Conv2d)]
    ups = [m for m in generator.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    # 7x7 in, two stride-2 downsamplings, 9 blocks of two 3x3 convs, 7x7 out.
    assert len(convs) == 1 + 2 + 18 + 1
    assert convs[0].kernel_size == (7, 7) and convs[0].out_channels == 64
    assert [c.out_channels for c in convs[1:3]] == [128, 256]
    assert [u.out_channels for u in ups] == [128, 64]
    assert convs[-1].out_channels == 1
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.5 for m in generator.modules()) == 9


@pytest.mark.parametrize(("size", "patches"), [(32, 2), (64, 6)])
def test_discriminator_gives_patch_logits(size, patches):
    discriminator = build_discriminator(TINY)
    pair = torch.randn(2, 2, size, size)
    features, logits = discriminator.forward_features(pair)
    assert logits.shape == (2, 1, patches, patches)
    assert [f.shape[1] for f in features] == [8, 16, 32, 64]
    assert translator.discriminator_grid(size) == patches
    assert torch.equal(discriminator.eval()(pair), discriminator.forward_features(pair)[1])


def test_published_discriminator_layout():
    discriminator = build_discriminator(TranslatorSettings())
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert convs[0].in_channels == 2
    assert all(hasattr(c, "parametrizations") for c in convs)


def _conv_weights(module: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(weight, bias) of every Conv2d; the unnormalised weight behind spectral norm."""
    pairs = []
    for conv in module.modules():
        if isinstance(conv, torch.nn.Conv2d):
            parametrized = getattr(conv, "parametrizations", None)
            weight = parametrized.weight.original if parametrized else conv.weight
            pairs.append((weight.detach(), conv.bias.detach()))
    return pairs


def test_default_init_is_pytorchs_and_normal_init_is_an_option():
    torch.manual_seed(0)
    for network in (build_generator(TINY), build_discriminator(TINY)):
        for weight, bias in _conv_weights(network):
            # PyTorch's kaiming_uniform(a=sqrt(5)): std 1 / sqrt(3 fan_in), 0.03 to 0.1 here.
            expected = 1.0 / np.sqrt(3 * weight[0].numel())
            assert abs(float(weight.std()) - expected) < 0.2 * expected
            assert bool(torch.all(bias != 0))
    normal = dataclasses.replace(TINY, init="normal_0.02")
    for network in (build_generator(normal), build_discriminator(normal)):
        pairs = _conv_weights(network)
        pooled = torch.cat([weight.flatten() for weight, _ in pairs])
        assert abs(float(pooled.std()) - 0.02) < 0.001
        assert all(bool(torch.all(bias == 0)) for _, bias in pairs)


def test_instance_norms_are_affine_unless_switched_off():
    def norms(settings):
        generator = build_generator(settings)
        return [m for m in generator.modules() if isinstance(m, torch.nn.InstanceNorm2d)]

    # Stem, 2 downsamplings, 2 per residual block, 2 upsamplings.
    assert len(norms(TINY)) == 1 + 2 + 2 + 2
    assert all(n.weight is not None and n.bias is not None for n in norms(TINY))
    plain = norms(dataclasses.replace(TINY, affine_norm=False))
    assert len(plain) == 7 and all(n.weight is None and n.bias is None for n in plain)


def _step_batch(settings: TranslatorSettings) -> tuple[torch.Tensor, torch.Tensor]:
    slices = shape_slices(2, 20)
    edges = torch.from_numpy(edges_for(settings, slices)).unsqueeze(1)
    return edges, torch.from_numpy(slices).unsqueeze(1)


def _fresh_networks(settings: TranslatorSettings, lr: float = 0.01):
    # Plain SGD, so that parameter changes are proportional to the gradients; Adam's first step
    # is close to lr x sign(gradient) and would hide differences in the loss.
    torch.manual_seed(0)
    generator, discriminator = build_generator(settings), build_discriminator(settings)
    generator.train()
    discriminator.train()
    opt_g = torch.optim.SGD(generator.parameters(), lr=lr)
    opt_d = torch.optim.SGD(discriminator.parameters(), lr=lr)
    return generator, discriminator, opt_g, opt_d


def _library_step(settings: TranslatorSettings, vgg=None, with_gp: bool = True):
    generator, discriminator, opt_g, opt_d = _fresh_networks(settings)
    edges, real = _step_batch(settings)
    torch.manual_seed(1)
    losses = translator._train_step(
        generator, discriminator, vgg, opt_g, opt_d, edges, real, settings, False, with_gp
    )
    return generator, discriminator, losses


def _bce(logits: torch.Tensor, label: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))


def _hand_step(settings: TranslatorSettings, generator_first: bool):
    """One step written out: G loss adv + 100 x L1 (no perceptual term), D loss BCE(real, 0.9) +
    BCE(fake, 0) (halved when the discriminator goes first) + gradient penalty."""
    generator, discriminator, opt_g, opt_d = _fresh_networks(settings)
    edges, real = _step_batch(settings)
    logged = {}

    def generator_update(fake):
        g_adv = _bce(discriminator(torch.cat([edges, fake], dim=1)), 1.0)
        g_l1 = (fake - real).abs().mean()
        opt_g.zero_grad()
        (g_adv + 100.0 * g_l1).backward()
        opt_g.step()
        logged.update(g_adv=g_adv.item(), g_l1=g_l1.item())

    def discriminator_update(fake, scale):
        d_bce = scale * (
            _bce(discriminator(torch.cat([edges, real], dim=1)), 0.9)
            + _bce(discriminator(torch.cat([edges, fake], dim=1)), 0.0)
        )
        gp = gradient_penalty(discriminator, edges, real, fake)
        opt_d.zero_grad()
        (d_bce + gp).backward()
        opt_d.step()
        logged.update(d_loss=d_bce.item(), gp=gp.item())

    torch.manual_seed(1)
    fake = generator(edges)
    if generator_first:
        generator_update(fake)
        with torch.no_grad():
            fresh = generator(edges)
        discriminator_update(fresh, 1.0)
    else:
        discriminator_update(fake.detach(), 0.5)
        generator_update(fake)
    return generator, discriminator, logged


def _assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


def _differs(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    pairs = zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    return any(not torch.allclose(x, y) for x, y in pairs)


@pytest.mark.parametrize("gan_step", ["reference", "discriminator_first"])
def test_train_step_order_and_losses_match_a_hand_written_step(gan_step):
    settings = dataclasses.replace(TINY, gan_step=gan_step)
    generator, discriminator, losses = _library_step(settings)
    reference = gan_step == "reference"
    hand_g, hand_d, hand_losses = _hand_step(settings, generator_first=reference)
    _assert_same_parameters(generator, hand_g)
    _assert_same_parameters(discriminator, hand_d)
    assert losses["g_perc"] == 0.0
    for key, value in hand_losses.items():
        assert losses[key] == pytest.approx(value, rel=1e-5), key
    # The other order gives other networks: the generator sees the pre- or post-step
    # discriminator, and the discriminator a fresh or the same fake.
    other_g, other_d, _ = _hand_step(settings, generator_first=not reference)
    assert _differs(generator, other_g) and _differs(discriminator, other_d)


@pytest.mark.parametrize("gan_step", ["reference", "discriminator_first"])
def test_lazy_gradient_penalty_weights_the_penalised_steps(gan_step):
    settings = dataclasses.replace(TINY, gan_step=gan_step, gp_every=3)
    # A penalised step of gp_every 3 is a step of gp_every 1 with three times the weight ...
    lazy_g, lazy_d, lazy = _library_step(settings)
    tripled_g, tripled_d, tripled = _library_step(
        dataclasses.replace(settings, gp_every=1, lambda_gp=3.0)
    )
    _assert_same_parameters(lazy_d, tripled_d)
    _assert_same_parameters(lazy_g, tripled_g)
    assert lazy["gp"] == pytest.approx(tripled["gp"]) and lazy["gp"] > 0
    # ... and the other steps are steps without the penalty, which change the discriminator.
    skipped_g, skipped_d, skipped = _library_step(settings, with_gp=False)
    plain_g, plain_d, _ = _library_step(dataclasses.replace(settings, lambda_gp=0.0))
    _assert_same_parameters(skipped_d, plain_d)
    _assert_same_parameters(skipped_g, plain_g)
    assert "gp" not in skipped
    assert _differs(skipped_d, lazy_d)


def test_lazy_gradient_penalty_is_a_positive_step_interval():
    for bad in (0, -2):
        with pytest.raises(ValueError, match="gp_every"):
            dataclasses.replace(TINY, gp_every=bad)


def test_vgg19_needs_a_local_weights_file(tmp_path):
    with pytest.raises(ValueError, match="vgg19_weights"):
        build_vgg19_features(None)
    with pytest.raises(ValueError, match="vgg19_weights"):
        build_vgg19_features(tmp_path / "missing.pth")
    settings = dataclasses.replace(TINY, perceptual="vgg19", epochs=1)
    with pytest.raises(ValueError, match="vgg19_weights"):
        train_translator(shape_slices(2, 0), shape_slices(0, 0), settings, tmp_path / "ck", seed=0)


def test_vgg19_loads_a_torchvision_style_state_dict_and_trains(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.05 for k, v in VGG19Relu33().state_dict().items()}
    state = {k: v for k, v in state.items() if k.startswith("features.")}
    # Layers past relu3_3 and the classifier, as in a full vgg19 file, are ignored.
    state["features.16.weight"] = torch.zeros(256, 256, 3, 3)
    state["classifier.0.weight"] = torch.zeros(4096, 25088 // 64)
    path = tmp_path / "vgg19.pth"
    torch.save(state, path)
    network = build_vgg19_features(path)
    assert torch.equal(network.features[14].weight, state["features.14.weight"])
    assert network(torch.zeros(1, 1, SIZE, SIZE)).shape == (1, 256, SIZE // 4, SIZE // 4)
    torch.save({k: v for k, v in state.items() if k != "features.12.bias"}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="features.12.bias"):
        build_vgg19_features(tmp_path / "bad.pth")
    settings = dataclasses.replace(TINY, perceptual="vgg19", vgg19_weights=str(path), epochs=1)
    _, history = train_translator(
        shape_slices(2, 0), shape_slices(1, 1), settings, tmp_path / "ck", seed=0, progress=print
    )
    assert history["g_perc"].iloc[0] > 0


def test_training_pairs_follow_the_settings_and_the_seed():
    slices = shape_slices(3, 21)
    inputs, targets = training_pairs(slices, TINY, seed=4)
    # Reference: three augmented copies per slice and no clean copy.
    assert inputs.shape == targets.shape == (9, SIZE, SIZE)
    np.testing.assert_array_equal(targets, np.repeat(slices, 3, axis=0))
    clean = edges_for(TINY, slices)
    assert not any(np.array_equal(inputs[i], clean[i // 3]) for i in range(9))
    again, _ = training_pairs(slices, TINY, seed=4)
    np.testing.assert_array_equal(inputs, again)
    assert not np.array_equal(inputs, training_pairs(slices, TINY, seed=5)[0])
    legacy = dataclasses.replace(TINY, **V0_OPTIONS)
    legacy_inputs, legacy_targets = training_pairs(slices, legacy, seed=4)
    assert legacy_inputs.shape == (12, SIZE, SIZE)
    np.testing.assert_array_equal(legacy_inputs[::4], edge_maps(slices, detector="skimage"))
    np.testing.assert_array_equal(legacy_targets, np.repeat(slices, 4, axis=0))


def test_mirrored_copies_flip_edges_and_target_together():
    # Shapes without a mirror symmetry, so that a mirrored target differs from the original.
    slices = shape_slices(4, 22)
    slices[:, : SIZE // 4] = -1.0
    settings = dataclasses.replace(TINY, augment_keep_unaugmented=True, augment_copies=3)
    plain_inputs, plain_targets = training_pairs(slices, settings, seed=4)
    mirrored = dataclasses.replace(settings, augment_mirror=True)
    inputs, targets = training_pairs(slices, mirrored, seed=4)
    flipped = [p for p in range(len(inputs)) if not np.array_equal(targets[p], plain_targets[p])]
    # The clean edge maps (every 4th pair) are never mirrored; about half of the copies are.
    assert all(p % 4 for p in flipped)
    assert 2 <= len(flipped) <= 10
    for p in range(len(inputs)):
        if p in flipped:
            # The same swaps as without mirroring, mirrored with the target across the first axis.
            np.testing.assert_array_equal(inputs[p], plain_inputs[p][::-1])
            np.testing.assert_array_equal(targets[p], plain_targets[p][::-1])
        else:
            np.testing.assert_array_equal(inputs[p], plain_inputs[p])
    np.testing.assert_array_equal(
        np.flatnonzero(translator.mirrored_pairs(mirrored, np.arange(16), seed=4)), flipped
    )
    assert not translator.mirrored_pairs(settings, np.arange(16), seed=4).any()
    picked = np.array(flipped[:1] + [0, 5])
    alone, alone_targets = translator.training_pair_batch(slices, picked, mirrored, seed=4)
    np.testing.assert_array_equal(alone, inputs[picked])
    np.testing.assert_array_equal(alone_targets, targets[picked])
    with pytest.raises(ValueError, match="augment_mirror"):
        dataclasses.replace(settings, augment_mirror="yes")


def test_train_translator_trains_on_training_pairs(tmp_path, monkeypatch):
    seen = []

    def record(generator, discriminator, vgg, opt_g, opt_d, edges, real, settings, use_amp, gp):
        seen.append(torch.cat([edges, real], dim=1).numpy().copy())
        return dict.fromkeys(("g_adv", "g_l1", "g_perc", "d_loss", "gp"), 0.0)

    monkeypatch.setattr(translator.training, "_train_step", record)
    slices = shape_slices(3, 22)
    settings = dataclasses.replace(TINY, epochs=1)
    train_translator(slices, slices[:0], settings, tmp_path, seed=6, progress=lambda _: None)
    inputs, targets = training_pairs(slices, settings, seed=6)
    trained = np.concatenate(seen)
    expected = np.stack([inputs, targets], axis=1)
    assert trained.shape == expected.shape
    # The same pairs, in the epoch's shuffled order.
    assert sorted(pair.tobytes() for pair in trained) == sorted(pair.tobytes() for pair in expected)


def test_vgg19_term_gives_the_generator_a_gradient(tmp_path):
    torch.manual_seed(0)
    state = {k: torch.randn_like(v) * 0.05 for k, v in VGG19Relu33().state_dict().items()}
    path = tmp_path / "vgg19.pth"
    torch.save({k: v for k, v in state.items() if k.startswith("features.")}, path)
    vgg = build_vgg19_features(path)
    settings = dataclasses.replace(TINY, perceptual="vgg19", vgg19_weights=str(path))
    with_term, _, losses = _library_step(settings, vgg)
    assert losses["g_perc"] > 0
    without, _, _ = _library_step(dataclasses.replace(settings, lambda_perceptual=0.0), vgg)
    # Were the term computed without gradient, as in the reference, both steps would be equal.
    assert _differs(with_term, without)


def test_legacy_options_train_on_clean_and_augmented_pairs(tmp_path):
    settings = dataclasses.replace(TINY, epochs=1, **V0_OPTIONS)
    _, history = train_translator(
        shape_slices(2, 23), shape_slices(1, 24), settings, tmp_path, seed=0, progress=print
    )
    # 2 slices x (1 clean + 3 augmented) = 8 pairs, batch 4: 2 steps.
    assert history["step"].tolist() == [2]
    assert history["g_perc"].iloc[0] > 0
    assert np.all(np.isfinite(history[["g_adv", "g_l1", "d_loss", "gp", "val_l1"]].to_numpy()))


def test_tiny_training_lowers_the_l1(tmp_path):
    train, val = shape_slices(6, 1), shape_slices(2, 2)
    torch.manual_seed(0)
    untrained = build_generator(TINY)
    start_l1 = float(np.mean(np.abs(translate(untrained, edge_maps(val)) - val)))
    lines = []
    generator, history = train_translator(train, val, TINY, tmp_path, seed=0, progress=lines.append)
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3]
    # 6 slices x 3 augmented copies = 18 pairs, batch 4: 5 steps per epoch.
    assert history["step"].tolist() == [5, 10, 15]
    assert history["g_l1"].iloc[-1] < history["g_l1"].iloc[0]
    assert history["val_l1"].iloc[-1] < start_l1
    assert np.all(np.isfinite(history[["g_adv", "g_perc", "d_loss", "gp"]].to_numpy()))
    assert len([line for line in lines if "epoch" in line]) >= 3
    assert not generator.training
    recon = translate(generator, edge_maps(val))
    assert recon.shape == val.shape and recon.dtype == np.float32
    assert recon.min() >= -1.0 and recon.max() <= 1.0


# gp_every 2 with 3 steps per epoch: epoch 2 starts on a step without the penalty, so a resumed
# run must count steps from the start of training, not of the resumed epoch.
@pytest.mark.parametrize("gp_every", [1, 2])
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, gp_every):
    train, val = shape_slices(4, 3), shape_slices(2, 4)
    settings = dataclasses.replace(TINY, epochs=2, gp_every=gp_every)
    straight, straight_history = train_translator(
        train, val, settings, tmp_path / "straight", seed=7, progress=lambda _: None
    )
    interrupted = tmp_path / "interrupted"
    train_translator(
        train,
        val,
        dataclasses.replace(settings, epochs=1),
        interrupted,
        seed=7,
        progress=lambda _: None,
    )
    lines = []
    resumed, resumed_history = train_translator(
        train, val, settings, interrupted, seed=7, progress=lines.append
    )
    assert any("resuming" in line and "epoch 1" in line for line in lines)
    assert resumed_history["epoch"].tolist() == [1, 2]
    assert_same_training(resumed, resumed_history, straight, straight_history)
    assert sorted(p.name for p in interrupted.iterdir()) == [CHECKPOINT_NAME]


class _Stop(Exception):
    pass


def _stop_after_epoch(number: int):
    def progress(line: str) -> None:
        if line.startswith(f"translator: epoch {number}/"):
            raise _Stop

    return progress


def test_learning_rate_decays_linearly_over_the_last_epochs(tmp_path):
    settings = dataclasses.replace(TINY, epochs=5, lr=0.01, lr_decay_epochs=3)
    rates = [translator.epoch_learning_rate(settings, e) for e in range(1, 6)]
    assert rates == pytest.approx([0.01, 0.01, 0.0075, 0.005, 0.0025])
    constant = dataclasses.replace(settings, lr_decay_epochs=0)
    assert all(translator.epoch_learning_rate(constant, e) == 0.01 for e in range(1, 6))
    # A run stopped after epoch 1 and resumed takes epoch 2's own rate.
    train, val = shape_slices(4, 3), shape_slices(2, 4)
    settings = dataclasses.replace(TINY, epochs=2, lr_decay_epochs=1)
    straight, straight_history = train_translator(
        train, val, settings, tmp_path / "straight", seed=7, progress=lambda _: None
    )
    with pytest.raises(_Stop):
        train_translator(
            train, val, settings, tmp_path / "stopped", seed=7, progress=_stop_after_epoch(1)
        )
    resumed, resumed_history = train_translator(
        train, val, settings, tmp_path / "stopped", seed=7, progress=lambda _: None
    )
    assert_same_training(resumed, resumed_history, straight, straight_history)
    # Without the decay the same steps give other weights.
    flat, _ = train_translator(
        train, val, dataclasses.replace(settings, lr_decay_epochs=0), tmp_path / "flat", seed=7,
        progress=lambda _: None,
    )
    assert _differs(flat, straight)
    # Asked for more epochs, a decaying run would decay elsewhere: refused, naming why.
    with pytest.raises(ValueError, match="decays its learning rate towards epoch 2, not 3"):
        train_translator(
            train, val, dataclasses.replace(settings, epochs=3), tmp_path / "stopped", seed=7,
            progress=lambda _: None,
        )


def test_finished_checkpoint_is_returned_without_training(tmp_path):
    train, val = shape_slices(2, 5), shape_slices(1, 6)
    settings = dataclasses.replace(TINY, epochs=1)
    first, history = train_translator(train, val, settings, tmp_path, seed=1, progress=print)
    lines = []
    again, again_history = train_translator(
        train, val, settings, tmp_path, seed=1, progress=lines.append
    )
    assert not any("epoch 1/1" in line for line in lines)
    assert again_history["epoch"].tolist() == [1]
    for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_resume_refuses_a_checkpoint_from_other_settings_seed_or_data(tmp_path):
    train, val = shape_slices(2, 8), shape_slices(1, 9)
    settings = dataclasses.replace(TINY, epochs=1)
    train_translator(train, val, settings, tmp_path, seed=1, progress=lambda _: None)
    changed = dataclasses.replace(settings, lambda_l1=10.0, epochs=2)
    with pytest.raises(ValueError, match="lambda_l1"):
        train_translator(train, val, changed, tmp_path, seed=1, progress=lambda _: None)
    with pytest.raises(ValueError, match="seed"):
        train_translator(train, val, settings, tmp_path, seed=2, progress=lambda _: None)
    with pytest.raises(ValueError, match="different slices"):
        train_translator(train[::-1], val, settings, tmp_path, seed=1, progress=lambda _: None)


CROP = 24


def test_crop_size_is_checked_naming_the_key(tmp_path):
    assert TranslatorSettings().crop_size is None
    assert TranslatorSettings.from_dict({"crop_size": CROP}).crop_size == CROP
    # Not a multiple of 4 (two downsamplings), too small for a discriminator patch, not a size.
    for bad in (30, 20, 0, -8, True, 24.0, "24"):
        with pytest.raises(ValueError, match="crop_size"):
            TranslatorSettings(crop_size=bad)
    # One downsampling: multiples of 2 are enough.
    assert TranslatorSettings(n_downsampling=1, crop_size=26).crop_size == 26
    too_big = dataclasses.replace(TINY, crop_size=SIZE + 4, epochs=1)
    with pytest.raises(ValueError, match=f"crop_size {SIZE + 4} is larger than the {SIZE} x"):
        train_translator(shape_slices(2, 0), shape_slices(0, 0), too_big, tmp_path, seed=0)
    assert not (tmp_path / CHECKPOINT_NAME).exists()


def _recorded_crops(tmp_path, monkeypatch, seed: int) -> list[np.ndarray]:
    seen = []

    def record(generator, discriminator, vgg, opt_g, opt_d, edges, real, settings, use_amp, gp):
        seen.append(torch.cat([edges, real], dim=1).numpy().copy())
        return dict.fromkeys(("g_adv", "g_l1", "g_perc", "d_loss", "gp"), 0.0)

    monkeypatch.setattr(translator.training, "_train_step", record)
    settings = dataclasses.replace(TINY, epochs=2, crop_size=CROP)
    folder = tmp_path / f"seed{seed}-{len(list(tmp_path.iterdir()))}"
    train_translator(
        shape_slices(3, 22),
        shape_slices(0, 0),
        settings,
        folder,
        seed=seed,
        progress=lambda _: None,
    )
    return seen


def test_crop_training_steps_on_windows_of_the_training_pairs(tmp_path, monkeypatch):
    seen = _recorded_crops(tmp_path, monkeypatch, seed=6)
    inputs, targets = training_pairs(shape_slices(3, 22), TINY, seed=6)
    pairs = np.stack([inputs, targets], axis=1)
    # 9 pairs, batch 4: 3 steps per epoch, 2 epochs.
    assert [batch.shape for batch in seen] == [
        (4, 2, CROP, CROP),
        (4, 2, CROP, CROP),
        (1, 2, CROP, CROP),
    ] * 2
    # Every CROP x CROP window of every pair: (pair, channel, top, left, CROP, CROP).
    windows = np.lib.stride_tricks.sliding_window_view(pairs, (CROP, CROP), axis=(2, 3))
    found = []
    for crop in np.concatenate(seen):
        same = (windows == crop[None, :, None, None]).all(axis=(1, 4, 5))
        assert same.any(), "a crop is no window of any training pair"
        found.append(tuple(int(v) for v in np.argwhere(same)[0]))
    # Every pair once per epoch, at positions that change from pair to pair.
    assert (
        sorted(i for i, _, _ in found[:9]) == sorted(i for i, _, _ in found[9:]) == list(range(9))
    )
    assert len({(top, left) for _, top, left in found}) > 3
    again = _recorded_crops(tmp_path, monkeypatch, seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(seen, again, strict=True))
    other = _recorded_crops(tmp_path, monkeypatch, seed=7)
    assert not all(np.array_equal(a, b) for a, b in zip(seen, other, strict=True))


def test_crop_corners_depend_on_seed_and_epoch_only():
    corners = translator.crop_corners(3, 2, 100, SIZE, CROP)
    assert corners.shape == (100, 2)
    assert corners.min() == 0 and corners.max() == SIZE - CROP
    np.testing.assert_array_equal(corners, translator.crop_corners(3, 2, 100, SIZE, CROP))
    assert not np.array_equal(corners, translator.crop_corners(3, 3, 100, SIZE, CROP))
    # A crop as large as the slice is the whole slice.
    assert not translator.crop_corners(3, 2, 10, SIZE, SIZE).any()


def test_crop_training_resumes_like_an_uninterrupted_run(tmp_path):
    train, val = shape_slices(4, 3), shape_slices(2, 4)
    settings = dataclasses.replace(TINY, epochs=2, crop_size=CROP)
    straight, straight_history = train_translator(
        train, val, settings, tmp_path / "straight", seed=7, progress=lambda _: None
    )
    interrupted = tmp_path / "interrupted"
    first_epoch = dataclasses.replace(settings, epochs=1)
    train_translator(train, val, first_epoch, interrupted, seed=7, progress=lambda _: None)
    # A checkpoint trained on other crops (here whole slices) is no start for this run.
    for other in (None, 28):
        with pytest.raises(ValueError, match=f"crop_size: checkpoint {CROP} vs now {other}"):
            train_translator(
                train,
                val,
                dataclasses.replace(settings, crop_size=other),
                interrupted,
                seed=7,
                progress=lambda _: None,
            )
    resumed, resumed_history = train_translator(
        train, val, settings, interrupted, seed=7, progress=lambda _: None
    )
    assert_same_training(resumed, resumed_history, straight, straight_history)
    # Trained on crops, the generator still translates whole slices.
    assert translate(straight, edges_for(settings, val)).shape == val.shape
    whole, _ = train_translator(
        train,
        val,
        dataclasses.replace(settings, crop_size=None),
        tmp_path / "whole",
        seed=7,
        progress=lambda _: None,
    )
    assert _differs(straight, whole)


def test_different_seeds_give_different_generators(tmp_path):
    train, val = shape_slices(2, 10), shape_slices(1, 11)
    settings = dataclasses.replace(TINY, epochs=1)
    a, _ = train_translator(train, val, settings, tmp_path / "a", seed=1, progress=lambda _: None)
    b, _ = train_translator(train, val, settings, tmp_path / "b", seed=2, progress=lambda _: None)
    edges = edge_maps(val)
    assert np.any(translate(a, edges) != translate(b, edges))


def test_translate_is_deterministic_and_restores_the_mode():
    torch.manual_seed(0)
    generator = build_generator(TINY).train()
    edges = edge_maps(shape_slices(5, 12))
    first = translate(generator, edges, batch_size=2)
    assert generator.training
    np.testing.assert_array_equal(first, translate(generator, edges, batch_size=2))
    # Batching changes float summation order only; active dropout would change far more.
    np.testing.assert_allclose(first, translate(generator, edges, batch_size=5), atol=1e-5)
    with pytest.raises(ValueError, match="multiple"):
        translate(generator, np.zeros((1, 30, 30), dtype=np.float32))


def test_save_and_load_round_trip(tmp_path):
    torch.manual_seed(0)
    settings = dataclasses.replace(TINY, n_blocks=2)
    generator = build_generator(settings)
    meta = {"slice_size": np.int64(SIZE), "intensity": {"window": np.array([-1000.0, 200.0])}}
    path = tmp_path / "models" / "translator.pt"
    save_translator(path, generator, settings, meta)
    assert sorted(p.name for p in path.parent.iterdir()) == ["translator.pt"]
    loaded, loaded_settings, loaded_meta = load_translator(path)
    assert loaded_settings == settings
    assert loaded_meta == {"slice_size": SIZE, "intensity": {"window": [-1000.0, 200.0]}}
    assert not loaded.training
    edges = edge_maps(shape_slices(3, 13))
    np.testing.assert_array_equal(translate(generator, edges), translate(loaded, edges))
    with pytest.raises(TypeError, match="JSON"):
        save_translator(tmp_path / "bad.pt", generator, settings, {"x": object()})
    assert not (tmp_path / "bad.pt").exists()


def _legacy_settings_dict() -> dict:
    # What a model or checkpoint file written before the reference-matching options held.
    saved = dataclasses.replace(TINY, **V0_OPTIONS).to_dict()
    for name in V0_OPTIONS:
        if name != "perceptual":
            del saved[name]
    return saved


def test_old_model_files_load_with_the_options_they_were_trained_with(tmp_path):
    saved = {**_legacy_settings_dict(), "perceptual": "none"}
    torch.manual_seed(0)
    generator = build_generator(dataclasses.replace(TINY, **V0_OPTIONS))
    path = tmp_path / "translator.pt"
    torch.save(
        {
            "format": "arepas-translator-1",
            "generator": generator.state_dict(),
            "settings": saved,
            "meta_json": json.dumps({"preprocessing": {"slice_size": SIZE}}),
        },
        path,
    )
    loaded, settings, meta = load_translator(path)
    assert settings == dataclasses.replace(TINY, **{**V0_OPTIONS, "perceptual": "none"})
    assert meta == {"preprocessing": {"slice_size": SIZE}}
    slices = shape_slices(2, 25)
    edges = edges_for(settings, slices)
    np.testing.assert_array_equal(edges, edge_maps(slices, detector="skimage"))
    np.testing.assert_array_equal(translate(loaded, edges), translate(generator, edges))
    torch.save({"format": "arepas-translator-0", "settings": saved}, tmp_path / "older.pt")
    with pytest.raises(ValueError, match="not a translator file"):
        load_translator(tmp_path / "older.pt")


def test_old_checkpoints_are_compared_with_their_legacy_settings(tmp_path):
    torch.save(
        {"format": "arepas-translator-checkpoint-1", "settings": _legacy_settings_dict()},
        tmp_path / CHECKPOINT_NAME,
    )
    settings = dataclasses.replace(TINY, epochs=1, perceptual="feature_matching")
    with pytest.raises(ValueError, match="gan_step: checkpoint 'discriminator_first'"):
        train_translator(
            shape_slices(2, 26), shape_slices(0, 0), settings, tmp_path, seed=0, progress=print
        )


def test_resume_checks_share_one_rule_that_names_every_difference(tmp_path):
    from arepas import io
    from arepas.translator import _CHECKPOINT_FORMAT, _check_resumable

    settings = TranslatorSettings.from_dict({"base_channels": 4, "n_blocks": 1, "epochs": 3})
    state = {"format": _CHECKPOINT_FORMAT, "settings": settings.to_dict(), "seed": 0,
             "data": "abc"}
    path = tmp_path / "last.pt"
    longer = TranslatorSettings.from_dict({**settings.to_dict(), "epochs": 9})
    _check_resumable(state, longer, 0, "abc", path)  # training longer is a resume
    wider = TranslatorSettings.from_dict({**settings.to_dict(), "base_channels": 8})
    with pytest.raises(ValueError, match=r"last\.pt.*base_channels: checkpoint 4 vs now 8"):
        _check_resumable(state, wider, 0, "abc", path)
    with pytest.raises(ValueError, match="seed: checkpoint 0 vs now 1"):
        _check_resumable(state, settings, 1, "abc", path)
    # The autoencoders' loader raises through the same rule, with the same wording.
    with pytest.raises(ValueError, match=r"ae\.pt: written with other settings or seed "
                                         r"\(lr: checkpoint 0\.1 vs now 0\.2\)"):
        io.check_resumable(tmp_path / "ae.pt", {"lr": 0.1, "epochs": 2}, {"lr": 0.2,
                           "epochs": 5}, 0, 0)


def test_cpu_training_runs_deterministic_kernels_without_the_nan_fill_and_restores_both():
    settings = TranslatorSettings()
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.utils.deterministic.fill_uninitialized_memory)
    with translator._torch_runtime(settings, torch.device("cpu")):
        assert torch.are_deterministic_algorithms_enabled()
        # New tensors are not filled: torch.empty keeps whatever the allocator hands out.
        assert not torch.utils.deterministic.fill_uninitialized_memory
    assert (torch.are_deterministic_algorithms_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory) == before


def _count_train_steps(monkeypatch) -> list[int]:
    """Counts the training steps (one generator and one discriminator update each)."""
    calls = []
    step = translator.training._train_step

    def counting(*args, **kwargs):
        calls.append(1)
        return step(*args, **kwargs)

    monkeypatch.setattr(translator.training, "_train_step", counting)
    return calls


@pytest.mark.parametrize(
    ("augment_keep_unaugmented", "max_steps", "steps", "epochs"),
    # 5 slices x 3 copies = 15 pairs in batches of 4: 4 steps an epoch; with the clean edge
    # map 20 pairs, 5 steps.
    [(False, None, [4, 8, 12], [1, 2, 3]), (False, 6, [4, 6], [1, 2]),
     (True, None, [5, 10, 15], [1, 2, 3]), (True, 5, [5], [1]), (True, 1, [1], [1])],
)
def test_planned_steps_are_the_steps_training_takes(
    tmp_path, monkeypatch, augment_keep_unaugmented, max_steps, steps, epochs
):
    train, val = shape_slices(5, 30), shape_slices(1, 31)
    settings = dataclasses.replace(
        TINY, augment_keep_unaugmented=augment_keep_unaugmented, max_steps=max_steps
    )
    calls = _count_train_steps(monkeypatch)
    lines = []
    _, history = train_translator(train, val, settings, tmp_path, seed=0, progress=lines.append)
    assert translator.planned_steps(settings, len(train)) == len(calls) == steps[-1]
    assert history["step"].tolist() == steps and history["epoch"].tolist() == epochs
    assert translator.last_epoch(settings, len(train)) == epochs[-1]
    # The cut epoch is validated like any other, and each epoch ends with a progress line.
    assert np.isfinite(history["val_l1"]).all()
    progress_lines = [line for line in lines if line.startswith("translator: step ")]
    assert len(progress_lines) == len(epochs)
    assert progress_lines[-1].startswith(f"translator: step {steps[-1]}/{steps[-1]} (100.0 %)")


def test_a_capped_run_is_finished_and_a_larger_budget_continues_it_exactly(tmp_path):
    train, val = shape_slices(4, 40), shape_slices(1, 41)
    # 12 pairs in batches of 4: 3 steps an epoch; 5 steps stop within epoch 2.
    capped = dataclasses.replace(TINY, max_steps=5)
    first, first_history = train_translator(
        train, val, capped, tmp_path / "capped", seed=3, progress=lambda _: None
    )
    assert first_history["step"].tolist() == [3, 5]
    lines = []
    again, again_history = train_translator(
        train, val, capped, tmp_path / "capped", seed=3, progress=lines.append
    )
    assert not any("epoch 2/2" in line for line in lines)
    assert_same_training(again, again_history, first, first_history)
    # A larger budget trains the cut epoch again from its start: the run of that budget.
    straight, straight_history = train_translator(
        train, val, TINY, tmp_path / "straight", seed=3, progress=lambda _: None
    )
    lines = []
    resumed, resumed_history = train_translator(
        train, val, TINY, tmp_path / "capped", seed=3, progress=lines.append
    )
    assert any("before epoch 2, which max_steps cut short at step 5" in line for line in lines)
    assert_same_training(resumed, resumed_history, straight, straight_history)
    # The capped run's epoch 1 is the uncapped run's.
    np.testing.assert_array_equal(
        first_history["g_l1"].iloc[:1].to_numpy(), straight_history["g_l1"].iloc[:1].to_numpy()
    )
    # A smaller budget than the checkpoint's returns it as it is.
    lines = []
    train_translator(
        train, val, dataclasses.replace(TINY, max_steps=2), tmp_path / "straight", seed=3,
        progress=lines.append,
    )
    assert any("already has 9 steps" in line for line in lines)


def test_learning_rate_decay_ends_at_the_last_epoch_the_budget_starts(tmp_path):
    train, val = shape_slices(4, 40), shape_slices(1, 41)
    # 3 steps an epoch: 6 steps are 2 epochs, and the decay follows 2 epochs, not 5.
    budget = dataclasses.replace(TINY, epochs=5, lr=0.01, lr_decay_epochs=1, max_steps=6)
    two = dataclasses.replace(budget, epochs=2, max_steps=None)
    capped, capped_history = train_translator(
        train, val, budget, tmp_path / "budget", seed=2, progress=lambda _: None
    )
    plain, plain_history = train_translator(
        train, val, two, tmp_path / "two", seed=2, progress=lambda _: None
    )
    assert_same_training(capped, capped_history, plain, plain_history)
    assert translator.epoch_learning_rate(budget, 2, translator.last_epoch(budget, 4)) == 0.005
    # Another budget of the same epochs resumes; one of more epochs would decay elsewhere.
    train_translator(
        train, val, dataclasses.replace(budget, max_steps=5), tmp_path / "budget", seed=2,
        progress=lambda _: None,
    )
    with pytest.raises(ValueError, match="decays its learning rate towards epoch 2, not 3"):
        train_translator(
            train, val, dataclasses.replace(budget, max_steps=7), tmp_path / "budget", seed=2,
            progress=lambda _: None,
        )


def test_max_steps_may_change_on_a_resume_and_old_checkpoints_have_none(tmp_path):
    from arepas.translator import _CHECKPOINT_FORMAT, _check_resumable

    settings = TranslatorSettings.from_dict({"base_channels": 4, "n_blocks": 1, "epochs": 3})
    old = {k: v for k, v in settings.to_dict().items() if k != "max_steps"}
    state = {"format": _CHECKPOINT_FORMAT, "settings": old, "seed": 0, "data": "abc"}
    capped = dataclasses.replace(settings, max_steps=100)
    _check_resumable(state, capped, 0, "abc", tmp_path / "last.pt", 10)
