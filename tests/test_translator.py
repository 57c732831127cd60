import dataclasses

import numpy as np
import pytest
import torch

from arepas.edges import edge_maps
from arepas.translator import (
    CHECKPOINT_NAME,
    HISTORY_COLUMNS,
    TranslatorSettings,
    VGG19Relu33,
    build_discriminator,
    build_generator,
    build_vgg19_features,
    load_translator,
    save_translator,
    train_translator,
    translate,
)

torch.set_num_threads(1)

SIZE = 32
TINY = TranslatorSettings(
    base_channels=8, n_blocks=1, disc_channels=8, batch_size=4, epochs=3, num_threads=1
)


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


def test_from_dict_rejects_unknown_keys_and_normalises_betas():
    s = TranslatorSettings.from_dict({"n_blocks": 4, "betas": [0.5, 0.9]})
    assert s.n_blocks == 4 and s.betas == (0.5, 0.9)
    assert TranslatorSettings.from_dict(s.to_dict()) == s
    with pytest.raises(ValueError, match="n_block"):
        TranslatorSettings.from_dict({"n_block": 4})
    with pytest.raises(ValueError, match="perceptual"):
        TranslatorSettings(perceptual="lpips")


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
    assert torch.equal(discriminator.eval()(pair), discriminator.forward_features(pair)[1])


def test_published_discriminator_layout():
    discriminator = build_discriminator(TranslatorSettings())
    convs = [m for m in discriminator.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 128, 256, 512, 1]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert convs[0].in_channels == 2
    assert all(hasattr(c, "parametrizations") for c in convs)


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


def test_tiny_training_lowers_the_l1(tmp_path):
    train, val = shape_slices(6, 1), shape_slices(2, 2)
    torch.manual_seed(0)
    untrained = build_generator(TINY)
    start_l1 = float(np.mean(np.abs(translate(untrained, edge_maps(val)) - val)))
    lines = []
    generator, history = train_translator(train, val, TINY, tmp_path, seed=0, progress=lines.append)
    assert list(history.columns) == HISTORY_COLUMNS
    assert history["epoch"].tolist() == [1, 2, 3]
    # 6 slices x (1 clean + 3 augmented) = 24 pairs, batch 4: 6 steps per epoch.
    assert history["step"].tolist() == [6, 12, 18]
    assert history["g_l1"].iloc[-1] < history["g_l1"].iloc[0]
    assert history["val_l1"].iloc[-1] < start_l1
    assert np.all(np.isfinite(history[["g_adv", "g_perc", "d_loss", "gp"]].to_numpy()))
    assert len([line for line in lines if "epoch" in line]) >= 3
    assert not generator.training
    recon = translate(generator, edge_maps(val))
    assert recon.shape == val.shape and recon.dtype == np.float32
    assert recon.min() >= -1.0 and recon.max() <= 1.0


def test_resumed_run_equals_an_uninterrupted_one(tmp_path):
    train, val = shape_slices(4, 3), shape_slices(2, 4)
    settings = dataclasses.replace(TINY, epochs=2)
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
    values = [c for c in HISTORY_COLUMNS if c != "seconds"]
    np.testing.assert_array_equal(
        resumed_history[values].to_numpy(), straight_history[values].to_numpy()
    )
    for (name, a), (_, b) in zip(
        straight.state_dict().items(), resumed.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), name
    assert sorted(p.name for p in interrupted.iterdir()) == [CHECKPOINT_NAME]


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
