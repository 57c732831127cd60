"""Reading and writing volumes, models and tables, with the checks every input gets.

Writes are atomic (temporary file in the same folder, then ``os.replace``), so a killed job never
leaves a file that a rerun would trust.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np


class InputError(ValueError):
    """Bad input data: the message names the subject, the sheet column and the file."""

    def __init__(self, subject: str, column: str, path: str | os.PathLike, problem: str):
        self.subject, self.column, self.path, self.problem = subject, column, str(path), problem
        super().__init__(f"subject '{subject}', column '{column}', file '{path}': {problem}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` only if the block succeeds.

    The block must create the temporary file itself (every writer here opens it by name), so
    the file gets the mode of any new file: 0666 less the user's umask, group-readable under
    the usual 022 or 002. A file from ``mkstemp`` would be 0600, and the rename would keep that
    mode, hiding every result from the other members of a shared project folder.

    A failed write (disk full, folder not writable) leaves neither ``path`` nor the temporary
    file, and raises an OSError that names ``path``.
    """
    path = Path(path)
    # Process id and a random part: no other writer, here or on another node, picks this name.
    # The real suffix stays last: nibabel, numpy and matplotlib choose the format from it.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}{suffix or _suffix(path)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        fix = ""
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            # The usual cause on a shared project folder: a folder another member created.
            fix = (
                f"; make '{path.parent}' writable for you (on a shared folder: group write "
                "permission, e.g. chmod -R g+w, and umask 002) or run in another folder"
            )
        raise OSError(exc.errno, f"cannot write '{path}': {exc.strerror or exc}{fix}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _suffix(path: Path) -> str:
    return "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix


def check_header(img: nib.spatialimages.SpatialImage, subject: str, column: str, path) -> None:
    """Reject images that are not usable 3D volumes, from the header alone (cheap)."""
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(
            subject,
            column,
            path,
            f"expected a 3D volume, got {len(img.shape)}D with shape {tuple(img.shape)}",
        )
    if min(shape) < 1:
        raise InputError(subject, column, path, f"empty volume, shape {tuple(shape)}")
    zooms = img.header.get_zooms()[:3]
    if any(not np.isfinite(z) or z <= 0 for z in zooms):
        raise InputError(subject, column, path, f"voxel size must be positive, header says {zooms}")
    affine = img.affine
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-6:
        raise InputError(subject, column, path, f"affine is not invertible:\n{np.round(affine, 4)}")


def open_nifti(path: str | os.PathLike, subject: str, column: str) -> nib.Nifti1Image:
    """Open a NIfTI file and check its header, raising InputError with context on any problem."""
    path = Path(path)
    if not path.exists():
        raise InputError(subject, column, path, "file does not exist")
    if not (path.name.endswith(".nii") or path.name.endswith(".nii.gz")):
        raise InputError(subject, column, path, "expected a NIfTI file ending in .nii or .nii.gz")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises several types for corrupt files
        raise InputError(subject, column, path, f"cannot be read as NIfTI ({exc})") from exc
    check_header(img, subject, column, path)
    _check_raw_voxel_size(path, img, subject, column)
    return img


def _check_raw_voxel_size(path: Path, img, subject: str, column: str) -> None:
    # nibabel silently replaces zero pixdims by 1 on load; a grid built from them would be a
    # guess, so read the header as stored.
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        return
    with nib.openers.ImageOpener(str(path)) as f:
        raw = type(img.header).from_fileobj(f, check=False)
    pixdim = raw["pixdim"][1:4]
    if np.any(pixdim <= 0):
        raise InputError(
            subject,
            column,
            path,
            f"voxel size must be positive, header says {tuple(float(v) for v in pixdim)}",
        )


def load_volume(path, subject: str, column: str) -> tuple[np.ndarray, np.ndarray]:
    """Voxel data (float32, 3D) and affine of a checked NIfTI file; NaN or inf is an error."""
    img = open_nifti(path, subject, column)
    try:
        data = np.asarray(img.dataobj, dtype=np.float32)
    except Exception as exc:
        raise InputError(subject, column, path, f"voxel data cannot be read ({exc})") from exc
    if data.ndim == 4:
        data = data[..., 0]
    bad = ~np.isfinite(data)
    if bad.any():
        raise InputError(subject, column, path, f"{int(bad.sum())} voxels are NaN or infinite")
    return data, img.affine.astype(np.float64)


def load_mask(path, subject: str, column: str, image_shape, image_affine) -> np.ndarray:
    """A binary mask that must lie on the image's grid (same shape and affine)."""
    data, affine = load_volume(path, subject, column)
    if data.shape != tuple(image_shape):
        raise InputError(
            subject,
            column,
            path,
            f"shape {data.shape} differs from the image's {tuple(image_shape)}",
        )
    if not np.allclose(affine, image_affine, atol=1e-3):
        raise InputError(
            subject,
            column,
            path,
            "affine differs from the image's: the mask must be on the image's grid",
        )
    values = np.unique(data)
    if not np.all(np.isin(values, (0, 1))):
        shown = ", ".join(f"{v:g}" for v in values[:6])
        raise InputError(subject, column, path, f"mask is not binary (values {shown}...)")
    return data > 0


def save_volume(path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> None:
    """Write a NIfTI volume atomically."""
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def save_mask(
    path, mask: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None
) -> None:
    """Write a binary mask atomically as a uint8 NIfTI of 0 and 1.

    With ``header`` (the native image's), the mask keeps what a viewer needs to lay it over that
    image: qform and sform codes, units, description. Data type, scaling and display range are
    set for a mask, whatever the image had (a CT stored as int16 with a slope, say).
    """
    data = np.asarray(mask, dtype=bool).astype(np.uint8)
    img = nib.Nifti1Image(data, affine, header=None if header is None else header.copy())
    img.set_data_dtype(np.uint8)
    img.header.set_slope_inter(1.0, 0.0)
    img.header["cal_min"], img.header["cal_max"] = 0, 1
    if header is None or not (img.header["qform_code"] or img.header["sform_code"]):
        img.set_qform(affine, code=1)
        img.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))


def save_arrays(path, **arrays: np.ndarray) -> None:
    """Write a compressed .npz atomically."""
    with atomic_path(path, suffix=".npz") as tmp:
        np.savez_compressed(tmp, **arrays)


def load_arrays(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def save_table(path, table) -> None:
    """Write a pandas DataFrame as TSV atomically."""
    with atomic_path(path, suffix=".tsv") as tmp:
        table.to_csv(tmp, sep="\t", index=False)


def resource_usage(wall_start: float):
    """Wall time, CPU time and peak memory of this process so far, with the column names of
    Snakemake's benchmark files (for rules that Snakemake caches, which may not have one)."""
    import resource
    import time

    import pandas as pd

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return pd.DataFrame(
        [
            {
                "s": round(time.perf_counter() - wall_start, 3),
                "max_rss": round(
                    max(own.ru_maxrss, children.ru_maxrss) / 1024, 2
                ),  # kB on Linux -> MB
                "cpu_time": round(
                    own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime, 3
                ),
            }
        ]
    )


def save_torch(payload, path) -> None:
    """``torch.save(payload, path)`` atomically: the file is either whole or absent."""
    import torch

    with atomic_path(path, suffix=".pt") as tmp, open(tmp, "wb") as handle:
        torch.save(payload, handle)
        handle.flush()
        # A checkpoint must survive a node crash right after the rename, not only a killed job.
        os.fsync(handle.fileno())


def check_resumable(
    path,
    saved_settings: dict,
    settings: dict,
    saved_seed: int,
    seed: int,
    free: tuple[str, ...] = ("epochs",),
) -> None:
    """Stop a resume from a checkpoint written with other settings or another seed.

    Settings named in `free` may differ (a resumed job may be asked to train longer). The error
    names the file, every differing setting with both values, and the fix. Every training loop
    that resumes goes through this one check.
    """
    keys = sorted((set(saved_settings) | set(settings)) - set(free))
    missing = object()
    differing = [
        k for k in keys if saved_settings.get(k, missing) != settings.get(k, missing)
    ]
    problems = [
        f"{k}: checkpoint {saved_settings.get(k, '(unset)')!r} "
        f"vs now {settings.get(k, '(unset)')!r}"
        for k in differing
    ]
    if saved_seed != seed:
        problems.append(f"seed: checkpoint {saved_seed} vs now {seed}")
    if problems:
        raise ValueError(
            f"cannot resume from {path}: written with other settings or seed "
            f"({'; '.join(problems)}); delete it (or its folder) to start afresh"
        )


def load_epoch_checkpoint(checkpoint, settings: dict, seed: int, device) -> dict | None:
    """The per-epoch checkpoint an epoch loop saved with ``settings_json`` and ``seed`` (the
    autoencoders'), loaded onto `device`; None where there is none yet.

    Only the epoch count may differ from the current `settings` (:func:`check_resumable`).
    """
    import json

    import torch

    if checkpoint is None or not Path(checkpoint).exists():
        return None
    saved = torch.load(checkpoint, map_location=device, weights_only=True)
    check_resumable(checkpoint, json.loads(saved["settings_json"]), dict(settings),
                    saved["seed"], seed)
    return saved


# Under a training job's checkpoint root: its uncompressed copy of the training stacks
# (arepas.stacks), which checkpoint_folder keeps.
STACK_CACHE = "stack_cache"


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read a block at a time: part of a checkpoint folder's key
    when a training job starts from another job's model."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_folder(root, setup: dict, *arrays: np.ndarray) -> Path:
    """The folder for one training set-up under ``root``: a hash of ``setup`` (settings that a
    resume may not change, the seed) and of the training arrays (ndarrays or on-disk
    StackArrays, hashed a block at a time). A job rerun after a kill finds its checkpoint there;
    a job rerun because its set-up changed starts afresh instead of resuming from a model
    trained otherwise. Other set-ups' folders are removed as stale, the stack cache is kept."""
    import hashlib
    import json
    import shutil

    digest = hashlib.sha256(json.dumps(setup, sort_keys=True, default=str).encode())
    for array in arrays:
        digest.update(str(array.shape).encode())
        # Block by block: the digest of the whole array's bytes without holding them at once.
        for first in range(0, len(array), 256):
            block = np.asarray(array[first : first + 256], dtype=np.float32)
            digest.update(np.ascontiguousarray(block).tobytes())
    root, key = Path(root), digest.hexdigest()[:16]
    for old in root.glob("*") if root.is_dir() else []:
        if old.name in (key, STACK_CACHE):
            continue
        if old.is_dir():
            shutil.rmtree(old)
        else:
            old.unlink()
    return root / key


def concat_arrays(paths, *keys: str) -> tuple[np.ndarray, ...]:
    """The named arrays of several .npz files (e.g. subjects' slice stacks), each joined along
    its first axis; every file is read once."""
    loaded = [load_arrays(p) for p in paths]
    return tuple(np.concatenate([arrays[key] for arrays in loaded]) for key in keys)
