import dataclasses
import os

import numpy as np
import pytest
import torch

from arepas import diagnostics, io, stacks, translator
from arepas.translator import CHECKPOINT_NAME, TranslatorSettings, train_translator

torch.set_num_threads(1)

SIZE = 32
TINY = TranslatorSettings(
    base_channels=8, n_blocks=1, disc_channels=8, batch_size=4, epochs=2, num_threads=1
)


def write_subjects(folder, counts, seed=0):
    """Preprocessed-style stacks (folder/<subject>/slices.npz) of random slices and ROIs."""
    rng = np.random.default_rng(seed)
    paths = []
    for number, n in enumerate(counts):
        slices = rng.uniform(-1, 1, (n, SIZE, SIZE)).astype(np.float32)
        slices[:, :4] = -1.0
        path = folder / f"sub{number:02d}" / "slices.npz"
        path.parent.mkdir(parents=True)
        io.save_arrays(
            path,
            slices=slices,
            roi=slices > 0,
            lesion=np.zeros(slices.shape, dtype=bool),
            indices=np.arange(n, dtype=np.int64) + 3,
        )
        paths.append(path)
    return paths


def test_cache_holds_the_joined_stacks_and_reads_any_rows(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 5, 2])
    cached = stacks.build_stack_cache(paths, tmp_path / "cache")
    slices, roi = io.concat_arrays(paths, "slices", "roi")
    assert cached.slices.shape == slices.shape and len(cached) == 10
    assert cached.subjects == ["sub00", "sub01", "sub02"]
    np.testing.assert_array_equal(np.asarray(cached.slices), slices)
    np.testing.assert_array_equal(cached.roi[[9, 0, 4]], roi[[9, 0, 4]])
    np.testing.assert_array_equal(cached.slices[2:7], slices[2:7])
    np.testing.assert_array_equal(cached.slices[-1], slices[-1])
    mask = np.arange(10) % 3 == 0
    np.testing.assert_array_equal(cached.slices[mask], slices[mask])
    np.testing.assert_array_equal(
        cached.indices, np.concatenate([np.arange(n) + 3 for n in [3, 5, 2]])
    )
    assert cached.slices.subject_of(3) == "sub01" and cached.slices.subject_of(8) == "sub02"
    # Hashed block by block, the stack gives the checkpoint folder an in-memory array gives.
    assert io.checkpoint_folder(tmp_path / "a", {}, cached.slices).name == (
        io.checkpoint_folder(tmp_path / "b", {}, slices).name
    )


def test_cache_is_reused_and_rebuilt_when_cut_short_or_its_inputs_change(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 4])
    cached = stacks.build_stack_cache(paths, tmp_path / "cache")
    written = cached.slices.path.stat().st_mtime_ns
    again = stacks.build_stack_cache(paths, tmp_path / "cache")
    assert again.slices.path.stat().st_mtime_ns == written
    with open(cached.slices.path, "r+b") as handle:
        handle.truncate(cached.slices.nbytes_on_disk - 10)
    rebuilt = stacks.build_stack_cache(paths, tmp_path / "cache")
    assert rebuilt.complete()
    np.testing.assert_array_equal(np.asarray(rebuilt.slices), io.concat_arrays(paths, "slices")[0])
    fewer = stacks.build_stack_cache(paths[:1], tmp_path / "cache")
    assert len(fewer) == 3


def test_a_cache_too_large_for_the_disk_is_refused_before_copying(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 4])
    needed = stacks.cache_bytes(paths)
    assert needed == 7 * SIZE * SIZE * (4 + 1)
    free = os.statvfs(tmp_path).f_bavail * os.statvfs(tmp_path).f_frsize
    with pytest.raises(stacks.CacheSpaceError, match="needs .* GB in .*cache.* GB are free"):
        stacks.build_stack_cache(paths, tmp_path / "cache", margin=free)
    assert not (tmp_path / "cache").exists()


def test_unreadable_stacks_name_the_subject_and_file(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 4])
    paths[1].write_bytes(b"not a zip file")
    with pytest.raises(stacks.StackReadError, match=r"subject 'sub01', file '.*sub01/slices.npz'"):
        stacks.build_stack_cache(paths, tmp_path / "cache")
    paths[1].unlink()
    with pytest.raises(stacks.StackReadError, match="sub01.*does not exist"):
        stacks.build_stack_cache(paths, tmp_path / "cache2")


def test_a_cache_cut_short_while_reading_names_the_subject(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 4])
    cached = stacks.build_stack_cache(paths, tmp_path / "cache")
    cached.slices.read(np.array([6]))
    with open(cached.slices.path, "r+b") as handle:
        handle.truncate(cached.slices.nbytes_on_disk - 1)
    with pytest.raises(
        stacks.StackReadError, match=rf"subject 'sub01', file '{cached.slices.path}': truncated"
    ):
        cached.slices.read(np.array([6]))
    cached.slices.path.unlink()
    with pytest.raises(stacks.StackReadError, match="subject 'sub00'.*cannot be opened"):
        cached.slices[0]


def test_edge_reliance_reads_the_training_slices_from_the_cache(tmp_path):
    train_paths = write_subjects(tmp_path / "train", [4, 4], seed=1)
    val_paths = write_subjects(tmp_path / "val", [4, 4], seed=2)
    cached = stacks.build_stack_cache(train_paths, tmp_path / "cache")
    torch.manual_seed(0)
    generator = translator.build_generator(TINY).eval()
    from_disk = diagnostics.edge_reliance(
        generator,
        TINY,
        **diagnostics.load_check_slices(train_paths, val_paths, train_stacks=cached),
    )
    in_memory = diagnostics.edge_reliance(
        generator, TINY, **diagnostics.load_check_slices(train_paths, val_paths)
    )
    assert from_disk == pytest.approx(in_memory, nan_ok=True)


def _silent(_):
    return None


def assert_same(model_a, history_a, model_b, history_b):
    values = [c for c in translator.HISTORY_COLUMNS if c != "seconds"]
    np.testing.assert_array_equal(history_a[values].to_numpy(), history_b[values].to_numpy())
    for a, b in zip(model_a.state_dict().values(), model_b.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_streamed_training_equals_in_memory_training_with_or_without_workers(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 2])
    cached = stacks.build_stack_cache(paths, tmp_path / "cache")
    (slices,) = io.concat_arrays(paths, "slices")
    val = slices[:2]
    settings = dataclasses.replace(TINY, epochs=1)
    memory = train_translator(slices, val, settings, tmp_path / "m", seed=3, progress=_silent)
    disk = train_translator(cached.slices, val, settings, tmp_path / "d", seed=3, progress=_silent)
    workers = train_translator(
        cached.slices, val, settings, tmp_path / "w", seed=3, progress=_silent, num_workers=2
    )
    assert_same(*memory, *disk)
    assert_same(*memory, *workers)


def test_streamed_training_resumes_like_an_uninterrupted_run_after_a_read_error(tmp_path):
    paths = write_subjects(tmp_path / "in", [3, 3])
    cache = tmp_path / "cache"
    cached = stacks.build_stack_cache(paths, cache)
    val = cached.slices[:2]
    straight = train_translator(
        cached.slices, val, TINY, tmp_path / "straight", seed=5, progress=_silent
    )

    def cut_after_first_epoch(line):
        # The second subject's slices vanish from the cache once epoch 1 is checkpointed.
        if "epoch 1/" in line:
            with open(cached.slices.path, "r+b") as handle:
                handle.truncate(cached.slices.nbytes_on_disk - SIZE * SIZE * 4)

    interrupted = tmp_path / "interrupted"
    with pytest.raises(stacks.StackReadError) as failure:
        train_translator(
            cached.slices, val, TINY, interrupted, seed=5, progress=cut_after_first_epoch
        )
    message = str(failure.value)
    assert "subject 'sub01'" in message and str(cached.slices.path) in message
    assert f"{interrupted / CHECKPOINT_NAME} holds epoch 1" in message
    assert torch.load(interrupted / CHECKPOINT_NAME, weights_only=True)["epoch"] == 1
    # A rerun copies the stacks again and resumes after epoch 1.
    rebuilt = stacks.build_stack_cache(paths, cache)
    lines = []
    resumed = train_translator(
        rebuilt.slices, val, TINY, interrupted, seed=5, progress=lines.append
    )
    assert any("resuming" in line and "epoch 1" in line for line in lines)
    assert_same(*resumed, *straight)


def test_training_pair_batch_makes_any_pair_alone():
    rng = np.random.default_rng(4)
    slices = rng.uniform(-1, 1, (5, SIZE, SIZE)).astype(np.float32)
    for settings in (TINY, dataclasses.replace(TINY, augment_keep_unaugmented=True)):
        inputs, targets = translator.training_pairs(slices, settings, seed=2)
        picked = np.array([7, 0, 13, 7])
        alone, alone_targets = translator.training_pair_batch(slices, picked, settings, seed=2)
        np.testing.assert_array_equal(alone, inputs[picked])
        np.testing.assert_array_equal(alone_targets, targets[picked])


def test_loader_workers_follow_the_jobs_cpus():
    assert [translator.loader_workers(t) for t in (1, 2, 4, 32)] == [0, 1, 3, 8]


def test_autoencoders_train_from_the_cache_as_from_memory(tmp_path):
    from arepas import autoencoder, dae

    paths = write_subjects(tmp_path / "in", [3, 4])
    cached = stacks.build_stack_cache(paths, tmp_path / "cache")
    slices, roi = io.concat_arrays(paths, "slices", "roi")
    ae_settings = autoencoder.AutoencoderSettings(epochs=2, batch_size=4, base_channels=4, depth=2)
    disk = autoencoder.train_autoencoder(
        cached.slices, slices[:2], ae_settings, 1, progress=_silent
    )
    memory = autoencoder.train_autoencoder(slices, slices[:2], ae_settings, 1, progress=_silent)
    np.testing.assert_array_equal(disk[1].to_numpy(), memory[1].to_numpy())
    dae_settings = dae.DaeSettings(epochs=1, batch_size=4, base_channels=4, depth=2)
    disk = dae.train_dae(cached.slices, cached.roi, None, None, dae_settings, 1, progress=_silent)
    memory = dae.train_dae(slices, roi, None, None, dae_settings, 1, progress=_silent)
    np.testing.assert_array_equal(disk[1].to_numpy(), memory[1].to_numpy())


def test_row_files_take_blocks_in_any_order_and_give_back_any_rows(tmp_path):
    rng = np.random.default_rng(3)
    data = rng.normal(size=(500, 5, 5)).astype(np.float32)
    rows = stacks.RowFile(tmp_path / "pairs" / "patches.npy", data.shape, np.float32)
    rows.write(300, data[300:])
    rows.write(0, data[:300])
    with pytest.raises(ValueError, match="does not fit"):
        rows.write(450, data[:100])
    np.testing.assert_array_equal(np.load(rows.path), data)
    reader = rows.reader()
    shuffled = rng.permutation(500)
    for count in (1, 3, 400):
        np.testing.assert_array_equal(reader[shuffled[:count]], data[shuffled[:count]])


def test_a_row_file_cut_short_names_the_file(tmp_path):
    rows = stacks.RowFile(tmp_path / "patches.npy", (200, 4, 4), np.float32)
    rows.write(0, np.ones((200, 4, 4), dtype=np.float32))
    reader = rows.reader()
    with open(rows.path, "r+b") as handle:
        handle.truncate(reader.nbytes_on_disk - 8)
    expected = rf"'mined pairs', file '{rows.path}': truncated"
    with pytest.raises(stacks.StackReadError, match=expected):
        reader.read(np.arange(150))


@pytest.mark.parametrize(
    ("rows", "side"),
    [(20_000, 3), (300, 80)],  # 36-byte rows read in merged spans; 25.6 kB rows one by one
)
def test_any_rows_in_any_order_with_repeats_read_like_the_array(tmp_path, rows, side):
    rng = np.random.default_rng(5)
    data = rng.normal(size=(rows, side, side)).astype(np.float32)
    np.save(tmp_path / "stack.npy", data)
    reader = stacks.StackArray(tmp_path / "stack.npy", ["a", "b"], [rows // 2, rows - rows // 2])
    requests = [
        rng.integers(0, rows, 1024),  # scattered, with repeats
        np.arange(rows)[::-1],  # everything, backwards
        np.array([rows - 1, 0, rows - 1]),
        np.arange(rows // 3, rows // 3 + 7),  # one contiguous run
    ]
    for request in requests:
        np.testing.assert_array_equal(reader.read(request), data[request])
    # Written into memory the caller owns, converted where the dtype differs.
    out = np.empty((4, side, side), dtype=np.float64)
    assert reader.read(np.array([5, 1, 5, 2]), out=out) is out
    np.testing.assert_array_equal(out, data[[5, 1, 5, 2]])
    with pytest.raises(ValueError, match="out has shape"):
        reader.read(np.array([1, 2]), out=np.empty((3, side, side), dtype=np.float32))


def test_a_span_read_cut_short_names_the_subject_of_its_last_row(tmp_path, monkeypatch):
    data = np.zeros((2_000, 3, 3), dtype=np.float32)
    np.save(tmp_path / "stack.npy", data)
    reader = stacks.StackArray(tmp_path / "stack.npy", ["early", "late"], [1_000, 1_000])
    full_size = reader.nbytes_on_disk
    with open(reader.path, "r+b") as handle:
        handle.truncate(full_size - 36 * 500)
    # The file shrinks after the size check: the positioned read itself comes back short.
    real_fstat = os.fstat
    monkeypatch.setattr(
        stacks.os, "fstat", lambda fd: os.stat_result((0,) * 6 + (full_size,) + (0,) * 3)
    )
    with pytest.raises(stacks.StackReadError, match="subject 'late'.*ended early"):
        reader.read(np.array([1_900, 10]))
    monkeypatch.setattr(stacks.os, "fstat", real_fstat)
    with pytest.raises(stacks.StackReadError, match="subject 'late'.*truncated"):
        reader.read(np.array([10]))


def test_batch_tensor_gives_float32_rows_in_torch_memory(tmp_path):
    data = np.arange(5 * 4 * 4, dtype=np.float64).reshape(5, 4, 4)
    np.save(tmp_path / "stack.npy", data)
    reader = stacks.StackArray(tmp_path / "stack.npy", ["a"], [5])
    for source in (data, reader):
        batch = stacks.batch_tensor(source, np.array([4, 0, 4]))
        assert batch.dtype == torch.float32 and batch.shape == (3, 1, 4, 4)
        assert batch.data_ptr() % 64 == 0
        np.testing.assert_array_equal(batch[:, 0].numpy(), data[[4, 0, 4]])
