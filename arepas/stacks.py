"""Training slices read from disk a batch at a time, so that a training job's memory does not
grow with the number of training subjects.

The preprocess rule writes each subject's slices as a compressed .npz, which cannot be read a
slice at a time. A training job therefore first copies its subjects' stacks, one subject at a
time, into one uncompressed .npy file per array (`build_stack_cache`), and then reads rows from
it with plain positioned reads (`StackArray`). Positioned reads, unlike a memory map, keep the
pages out of the process's resident memory and turn a cache file that was truncated or removed
during training into an error naming the subject and the file (a memory map would crash the
process with SIGBUS instead).
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from arepas.io import atomic_path

# Arrays of a subject's slices.npz that training jobs read per batch; "indices" (one integer per
# slice) is small and kept in memory.
CACHED_KEYS = ("slices", "roi")
_MANIFEST = "manifest.json"
_MANIFEST_FORMAT = "arepas-stack-cache-1"
# Kept free beside the cache: checkpoints, logs and other jobs still need room to write.
DISK_MARGIN_BYTES = 1 << 30
# Rows per read when a whole array is streamed (hashing, copying).
_CHUNK_ROWS = 256
# Rows of one request closer than this (bytes skipped) share one positioned read; no read is
# longer than _SPAN_BYTES (StackArray._spans says why).
_GAP_BYTES = 16 * 1024
_SPAN_BYTES = 4 * 1024 * 1024


class StackReadError(RuntimeError):
    """A subject's slice stack could not be read; the message names the subject and the file."""

    def __init__(self, subject: str, path: str | os.PathLike, problem: str) -> None:
        self.subject, self.path, self.problem = subject, str(path), problem
        super().__init__(f"subject '{subject}', file '{path}': {problem}")

    def __reduce__(self):
        # Rebuilt from its parts when it crosses from a data-loader worker to the main process.
        return (type(self), (self.subject, self.path, self.problem))


class CacheSpaceError(OSError):
    """The uncompressed training cache would not fit on its disk."""


class StackArray:
    """Rows of one array (e.g. "slices") of several subjects, stored one subject after the
    other in an uncompressed .npy file and read on demand.

    Indexing with an integer, a slice, an integer array or a boolean mask returns an ordinary
    ndarray holding only those rows; nothing else stays in memory.
    """

    def __init__(
        self, path: str | os.PathLike, subjects: Sequence[str], rows: Sequence[int]
    ) -> None:
        self.path = Path(path)
        self.subjects = list(subjects)
        counts = np.asarray(rows, dtype=np.int64)
        if len(counts) != len(self.subjects):
            raise ValueError("need one row count per subject")
        # starts[k] is the first row of subject k; the last entry is the total.
        self.starts = np.concatenate([[0], np.cumsum(counts)])
        try:
            with open(self.path, "rb") as handle:
                version = np.lib.format.read_magic(handle)
                shape, fortran, dtype = _read_header(handle, version)
                self._offset = handle.tell()
        except (OSError, ValueError) as exc:
            raise StackReadError(
                self.subjects[0] if subjects else "?", self.path, str(exc)
            ) from exc
        if fortran or shape[0] != self.starts[-1]:
            raise ValueError(f"{self.path} holds {shape}, expected {int(self.starts[-1])} rows")
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
        self._file_bytes = self._offset + self.shape[0] * self._row_bytes

    @property
    def nbytes_on_disk(self) -> int:
        """Size of the cache file: header and rows."""
        return self._file_bytes

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def subject_of(self, row: int) -> str:
        """The subject a row belongs to."""
        return self.subjects[int(np.searchsorted(self.starts, row, side="right")) - 1]

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            return self[rows][(slice(None), *rest)] if not np.isscalar(rows) else self[rows][rest]
        if isinstance(key, int | np.integer):
            row = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= row < len(self):
                raise IndexError(f"row {key} out of range for {len(self)} rows")
            return self.read(np.array([row]))[0]
        if isinstance(key, slice):
            return self.read(np.arange(len(self))[key])
        index = np.asarray(key)
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} rows")
            index = np.flatnonzero(index)
        return self.read(index)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self.read(np.arange(len(self)))
        return whole if dtype is None else whole.astype(dtype)

    def read(self, rows: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """The given rows, in the given order, as an array of shape (len(rows), ...).

        With `out` (that shape; any dtype the stored one casts to), the rows are written into
        it and it is returned: a caller can hand in memory it allocated itself, e.g. a torch
        tensor's.
        """
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        shape = (len(rows), *self.shape[1:])
        if out is not None and out.shape != shape:
            raise ValueError(f"out has shape {out.shape}, the rows need {shape}")
        target = out if out is not None and out.dtype == self.dtype else None
        if target is None or not target.flags.c_contiguous:
            target = np.empty(shape, dtype=self.dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= len(self)):
            raise IndexError(f"rows outside 0..{len(self) - 1}")
        if len(rows):
            self._read_into(rows, target.reshape(len(rows), -1).view(np.uint8))
        if out is None:
            return target
        if target is not out:
            out[...] = target
        return out

    def _read_into(self, rows: np.ndarray, flat: np.ndarray) -> None:
        # Opened per call: worker processes of a data loader each get their own descriptor.
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise self._error(int(rows[0]), f"cannot be opened ({exc.strerror or exc})") from exc
        try:
            size = os.fstat(fd).st_size
            if size < self._file_bytes:
                # Named after the first row the file no longer holds, whichever were asked for.
                missing = min(max(size - self._offset, 0) // self._row_bytes, len(self) - 1)
                raise self._error(
                    int(missing),
                    f"truncated: {size} bytes where the cache holds {self._file_bytes}",
                )
            if self._row_bytes >= _GAP_BYTES:
                # Rows this large are never merged: each is read straight into its place.
                for position, row in enumerate(rows.tolist()):
                    self._pread_into(fd, flat[position], row, 1)
                return
            order, ordered, starts, firsts, counts = self._spans(rows)
            # The spans are read one after the other into one buffer, and the requested rows
            # gathered from it at once.
            buffer = np.empty((int(counts.sum()), self._row_bytes), dtype=np.uint8)
            filled = 0
            for first, count in zip(firsts.tolist(), counts.tolist(), strict=True):
                self._pread_into(fd, buffer[filled : filled + count], first, count)
                filled += count
            span_of = np.repeat(np.arange(len(starts)), np.diff(starts, append=len(ordered)))
            buffered = (np.cumsum(counts) - counts)[span_of] + ordered - firsts[span_of]
            flat[order] = buffer[buffered]
        except OSError as exc:
            raise self._error(int(rows[0]), f"cannot be read ({exc.strerror or exc})") from exc
        finally:
            os.close(fd)

    def _pread_into(self, fd: int, target: np.ndarray, first: int, count: int) -> None:
        """Rows first..first+count-1 into target, a C-contiguous uint8 block of their size."""
        length = count * self._row_bytes
        got = os.preadv(
            fd, [memoryview(target.reshape(-1))], self._offset + first * self._row_bytes
        )
        if got != length:
            raise self._error(first + count - 1, "ended early (truncated while training?)")

    def _spans(self, rows: np.ndarray):
        """The request sorted (order, ordered rows); for each positioned read covering it, where
        it starts in the sorted request, its first row and its row count.

        A system call per row made a batch of 1,024 patches of 6×6 float32 take 4 ms (twice,
        once per side of the pairs, in a scorer step of about 200 ms), so rows closer than
        _GAP_BYTES are read together with the rows between them. The gap was timed for such
        batches from 14,000 to 400,000 stored patches: 16 kB beat 8 and 32 kB or tied, and
        took 0.5-3 ms a batch. A read spans at most _SPAN_BYTES, which bounds the memory one
        call adds.
        """
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        span_rows = max(1, _SPAN_BYTES // self._row_bytes)
        skipped = (np.diff(ordered) - 1) * self._row_bytes
        breaks = (skipped > _GAP_BYTES) | (np.diff(ordered // span_rows) != 0)
        starts = np.concatenate([[0], np.flatnonzero(breaks) + 1])
        ends = np.concatenate([starts[1:], [len(ordered)]])
        return order, ordered, starts, ordered[starts], ordered[ends - 1] - ordered[starts] + 1

    def _error(self, row: int, problem: str) -> StackReadError:
        subject = self.subject_of(row)
        number = self.subjects.index(subject)
        first, last = int(self.starts[number]), int(self.starts[number + 1]) - 1
        return StackReadError(
            subject,
            self.path,
            f"{problem}; rows {first}-{last} of this cache are that subject's slices. The last "
            "finished epoch's checkpoint is kept: rerun the job to rebuild the cache and resume",
        )

    def chunks(self, rows: int = _CHUNK_ROWS):
        """The whole array in consecutive blocks of `rows` rows."""
        for first in range(0, len(self), rows):
            yield self.read(np.arange(first, min(first + rows, len(self))))


def _read_header(handle, version: tuple[int, int]):
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(handle)
    return np.lib.format.read_array_header_2_0(handle)


def _npz_header(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    # The .npy header at the start of the member: decompresses a few bytes, not the array.
    with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
        version = np.lib.format.read_magic(member)
        shape, fortran, dtype = _read_header(member, version)
    if fortran:
        raise ValueError("Fortran-ordered arrays are not supported")
    return tuple(shape), np.dtype(dtype)


def array_chunks(array, rows: int = _CHUNK_ROWS):
    """Consecutive row blocks of an ndarray or a StackArray."""
    if isinstance(array, StackArray):
        yield from array.chunks(rows)
        return
    for first in range(0, len(array), rows):
        yield np.asarray(array[first : first + rows])


def batch_tensor(source, rows: np.ndarray):
    """Rows of an ndarray or a StackArray as a float32 torch tensor of shape (b, 1, ...).

    The rows are written straight into memory torch allocated: torch aligns it to 64 bytes,
    numpy only to 16, and convolutions on an unaligned input ran about 2 % slower (the
    autoencoder's step at 64², CPU).
    """
    import torch

    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    batch = torch.empty((len(rows), 1, *source.shape[1:]), dtype=torch.float32)
    target = batch.numpy()[:, 0]
    if isinstance(source, StackArray):
        source.read(rows, out=target)
    else:
        target[...] = np.asarray(source)[rows]
    return batch


class SliceStacks:
    """The slices, ROIs, slice indices and subject numbers of several subjects' stacks, the first
    two on disk (StackArray), the others in memory; built by build_stack_cache."""

    def __init__(self, folder: Path, manifest: dict) -> None:
        self.folder = folder
        self.subjects = [entry["subject"] for entry in manifest["subjects"]]
        self.sources = [entry["source"] for entry in manifest["subjects"]]
        rows = [entry["rows"] for entry in manifest["subjects"]]
        self.slices = StackArray(folder / "slices.npy", self.subjects, rows)
        self.roi = StackArray(folder / "roi.npy", self.subjects, rows)
        self.indices = np.load(folder / "indices.npy")
        self.subject_number = np.repeat(np.arange(len(rows)), rows)

    def __len__(self) -> int:
        return len(self.slices)

    def complete(self) -> bool:
        """Whether every cache file has the size its header promises."""
        return all(
            array.path.exists() and array.path.stat().st_size == array.nbytes_on_disk
            for array in (self.slices, self.roi)
        )

    def remove(self) -> None:
        """Delete the cache folder (after training: the checkpoints do not need it)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def _source_entry(path: Path, subject: str) -> dict:
    stat = path.stat()
    return {
        "subject": subject,
        "source": str(path),
        "bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
    }


def subject_of_stack(path: str | os.PathLike) -> str:
    """The subject a preprocessed stack belongs to: its folder's name
    (results/<dataset>/preprocessed/<subject>/slices.npz)."""
    return Path(path).parent.name


def cache_bytes(paths: Sequence[str | os.PathLike]) -> int:
    """Bytes the uncompressed cache of these subjects' stacks takes (from the file headers)."""
    total = 0
    for path in paths:
        for key in CACHED_KEYS:
            try:
                shape, dtype = _npz_header(Path(path), key)
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
                problem = f"no readable '{key}' array ({exc})"
                raise StackReadError(subject_of_stack(path), path, problem) from exc
            total += int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    return total


def check_free_space(folder: Path, needed: int, margin: int = DISK_MARGIN_BYTES) -> None:
    """Raise CacheSpaceError if `needed` bytes (plus a margin) do not fit on folder's disk."""
    probe = folder
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + margin > free:
        raise CacheSpaceError(
            f"the uncompressed training cache needs {needed / 1e9:.2f} GB in '{folder}' but only "
            f"{free / 1e9:.2f} GB are free ({margin / 1e9:.1f} GB are kept free for checkpoints "
            "and logs); free disk space there, or point the job's checkpoint folder at a larger "
            "disk"
        )


def build_stack_cache(
    paths: Sequence[str | os.PathLike],
    folder: str | os.PathLike,
    subjects: Sequence[str] | None = None,
    margin: int = DISK_MARGIN_BYTES,
) -> SliceStacks:
    """Copy several subjects' slices.npz into uncompressed per-array files under `folder`, one
    subject in memory at a time, and open them for per-batch reading.

    A folder whose manifest names the same source files (path, size, modification time) is
    reused as it is, so a resumed job does not copy again. Before copying, the free disk space
    is checked (CacheSpaceError). A stack that cannot be read is a StackReadError naming the
    subject and the file.
    """
    folder = Path(folder)
    paths = [Path(p) for p in paths]
    if not paths:
        raise ValueError("no training stacks given")
    names = list(subjects) if subjects is not None else [subject_of_stack(p) for p in paths]
    for path, subject in zip(paths, names, strict=True):
        if not path.exists():
            raise StackReadError(subject, path, "file does not exist")
    sources = [_source_entry(p, s) for p, s in zip(paths, names, strict=True)]
    manifest_path = folder / _MANIFEST
    if manifest_path.exists():
        saved = json.loads(manifest_path.read_text())
        if (
            saved.get("format") == _MANIFEST_FORMAT
            and [{k: v for k, v in entry.items() if k != "rows"} for entry in saved["subjects"]]
            == sources
        ):
            cached = SliceStacks(folder, saved)
            # A cache file cut short (disk trouble, a killed copy) is copied again.
            if cached.complete():
                return cached
    if folder.exists():
        shutil.rmtree(folder)
    check_free_space(folder, cache_bytes(paths), margin)
    folder.mkdir(parents=True)

    headers = {}
    for key in CACHED_KEYS:
        shapes = [_npz_header(p, key) for p in paths]
        item_shapes = {shape[1:] for shape, _ in shapes}
        if len(item_shapes) != 1:
            raise ValueError(f"the stacks' '{key}' arrays differ in slice shape: {item_shapes}")
        total = sum(shape[0] for shape, _ in shapes)
        dtype = np.dtype(bool) if key == "roi" else np.dtype(np.float32)
        headers[key] = {
            "descr": np.lib.format.dtype_to_descr(dtype),
            "fortran_order": False,
            "shape": (total, *item_shapes.pop()),
        }
    handles = {key: open(folder / f"{key}.npy", "wb") for key in CACHED_KEYS}
    indices = []
    try:
        for key, handle in handles.items():
            np.lib.format.write_array_header_2_0(handle, headers[key])
        for entry, path in zip(sources, paths, strict=True):
            try:
                with np.load(path, allow_pickle=False) as stack:
                    arrays = {key: stack[key] for key in (*CACHED_KEYS, "indices")}
            except (OSError, KeyError, ValueError, zipfile.BadZipFile) as exc:
                raise StackReadError(entry["subject"], path, f"cannot be read ({exc})") from exc
            entry["rows"] = len(arrays["slices"])
            for key, handle in handles.items():
                dtype = np.dtype(headers[key]["descr"])
                handle.write(np.ascontiguousarray(arrays[key], dtype=dtype).tobytes())
            indices.append(arrays["indices"].astype(np.int64))
    finally:
        for handle in handles.values():
            handle.close()
    np.save(folder / "indices.npy", np.concatenate(indices))
    manifest = {"format": _MANIFEST_FORMAT, "subjects": sources}
    # The manifest last: a folder without one is a copy that did not finish.
    with atomic_path(manifest_path) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1))
    return SliceStacks(folder, manifest)


class RowFile:
    """An uncompressed .npy file of known shape, written in row blocks at any position and read
    back as a StackArray: for arrays built during a job that must not be held in memory (the
    patch scorer's mined pairs and the reconstructions they are cut from)."""

    def __init__(
        self, path: str | os.PathLike, shape: Sequence[int], dtype, owner: str = "mined pairs"
    ) -> None:
        self.path = Path(path)
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.owner = owner
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        with open(self.path, "wb") as handle:
            np.lib.format.write_array_header_2_0(handle, header)
            self._offset = handle.tell()
            self._row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize
            # Full length at once (sparse where the file system allows): rows may come in any
            # order, and a reader sees the promised size only once the header is right.
            handle.truncate(self._offset + self.shape[0] * self._row_bytes)

    def write(self, first: int, block: np.ndarray) -> None:
        """Rows first .. first + len(block) - 1."""
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.shape[1:] or not 0 <= first <= self.shape[0] - len(block):
            raise ValueError(
                f"block {block.shape} at row {first} does not fit {self.path} {self.shape}"
            )
        with open(self.path, "r+b") as handle:
            handle.seek(self._offset + first * self._row_bytes)
            handle.write(block.tobytes())

    def reader(self) -> StackArray:
        return StackArray(self.path, [self.owner], [self.shape[0]])


def row_file_bytes(shape: Sequence[int], dtype) -> int:
    """Disk bytes of a RowFile's rows (header aside)."""
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
