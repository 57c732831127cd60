"""Registration to a template with ANTsPy, and the inverse mapping back to a subject's native grid.

Volumes travel as (array, RAS affine) pairs like everywhere else in the package; the conversion to
ITK's LPS physical space happens only here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import ants
import numpy as np

from arepas.preprocessing import resample_mask

# ANTsPy names of the transforms the config may ask for.
TRANSFORMS = {"affine": "Affine", "syn": "SyN", "rigid": "Rigid"}
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def to_ants(volume: np.ndarray, affine: np.ndarray) -> ants.ANTsImage:
    """An ANTs image with the voxel order of ``volume`` and the geometry of its RAS ``affine``."""
    lps = _RAS_TO_LPS @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    direction = lps[:3, :3] / spacing
    return ants.from_numpy(
        np.ascontiguousarray(volume, dtype=np.float32),
        origin=lps[:3, 3].tolist(),
        spacing=spacing.tolist(),
        direction=direction,
    )


def template_on_grid(
    template: np.ndarray, template_affine: np.ndarray, spacing
) -> tuple[np.ndarray, np.ndarray]:
    """The template resampled to the working spacing (its own orientation kept)."""
    img = ants.resample_image(
        to_ants(template, template_affine),
        tuple(float(s) for s in spacing),
        use_voxels=False,
        interp_type=0,
    )
    return img.numpy().astype(np.float32), _ras_affine(img)


def _ras_affine(img: ants.ANTsImage) -> np.ndarray:
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(img.direction) * np.asarray(img.spacing)
    lps[:3, 3] = img.origin
    return _RAS_TO_LPS @ lps


def register(
    moving: np.ndarray,
    moving_affine: np.ndarray,
    fixed: np.ndarray,
    fixed_affine: np.ndarray,
    transform: str,
    out_dir: str | os.PathLike,
    seed: int = 0,
) -> dict:
    """Register a native scan to the template; its transform files replace ``out_dir``'s content.

    ``out_dir`` holds one registration's transforms and nothing else: every file of an earlier
    registration there (another ``transform``, a replaced image or template) is overwritten or
    removed, so a rerun never applies a stale transform. Returns a description
    (JSON-serialisable) with the forward and inverse transform lists, as names in ``out_dir``.
    """
    if transform not in TRANSFORMS:
        raise ValueError(
            f"unknown registration transform '{transform}', choose from {sorted(TRANSFORMS)}"
        )
    # A fixed seed and one ITK thread make the sampled metric, hence the result, repeatable.
    ants.config.set_ants_deterministic(True, seed_value=int(seed) + 1)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    # ANTs writes into a folder of this run's own, so a failed run leaves the old transforms
    # whole and two runs never mix their files.
    with tempfile.TemporaryDirectory(prefix=".registration.", dir=out_dir) as scratch:
        result = ants.registration(
            fixed=to_ants(fixed, fixed_affine),
            moving=to_ants(moving, moving_affine),
            type_of_transform=TRANSFORMS[transform],
            outprefix=str(Path(scratch) / "tmp_"),
        )
        written = {Path(src) for key in ("fwdtransforms", "invtransforms") for src in result[key]}
        kept = {
            key: [Path(src).name.replace("tmp_", "", 1) for src in result[key]]
            for key in ("fwdtransforms", "invtransforms")
        }
        names = {src.name.replace("tmp_", "", 1) for src in written}
        for old in out_dir.iterdir():
            if old.is_file() and old.name not in names:
                old.unlink()
        for src in written:
            os.replace(src, out_dir / src.name.replace("tmp_", "", 1))
    # For the inverse, ANTs inverts the affine matrices and uses the inverse warp fields as given.
    kept["invert"] = [name.endswith(".mat") for name in kept["invtransforms"]]
    kept["transform"] = transform
    return kept


def _apply(volume, affine, target_shape, target_affine, files, invert, interpolator) -> np.ndarray:
    reference = to_ants(np.zeros(target_shape, np.float32), target_affine)
    out = ants.apply_transforms(
        fixed=reference,
        moving=to_ants(volume, affine),
        transformlist=files,
        whichtoinvert=invert,
        interpolator=interpolator,
    )
    return out.numpy().astype(np.float32)


def apply_forward(
    volume: np.ndarray,
    affine: np.ndarray,
    fixed_shape,
    fixed_affine: np.ndarray,
    description: dict,
    transform_dir,
    interpolator: str = "linear",
) -> np.ndarray:
    """Map a native-grid volume into template space."""
    files = [str(Path(transform_dir) / n) for n in description["fwdtransforms"]]
    return _apply(volume, affine, fixed_shape, fixed_affine, files, None, interpolator)


def apply_inverse(
    volume: np.ndarray,
    affine: np.ndarray,
    native_shape,
    native_affine: np.ndarray,
    description: dict,
    transform_dir,
    interpolator: str = "linear",
) -> np.ndarray:
    """Map a template-space volume (e.g. an anomaly map) back onto the subject's native grid."""
    files = [str(Path(transform_dir) / n) for n in description["invtransforms"]]
    return _apply(
        volume, affine, native_shape, native_affine, files, description["invert"], interpolator
    )


def load_template(
    template: str, template_mask: str | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Template image, RAS affine and organ mask: ``mni152`` (the MNI152 2009a T1 at 1 mm that
    nilearn bundles, used offline) or a NIfTI path with its mask path."""
    import nibabel as nib

    if template == "mni152":
        from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

        img, mask = load_mni152_template(resolution=1), load_mni152_brain_mask(resolution=1)
    else:
        if not template_mask:
            raise ValueError(
                f"template '{template}' needs `template_mask` (its organ mask) in the config"
            )
        img, mask = nib.load(template), nib.load(template_mask)
    data = np.asarray(img.dataobj, dtype=np.float32)
    return data, img.affine.astype(float), np.asarray(mask.dataobj) > 0


def template_for_grid(
    template: str, template_mask: str | None, spacing
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, RAS affine, boolean organ mask) of a template resampled to the working `spacing`:
    what the prepare_template rule writes and every registration of a dataset uses."""
    data, affine, mask = load_template(template, template_mask)
    image, image_affine = template_on_grid(data, affine, spacing)
    on_grid = resample_mask(mask, affine, image.shape, image_affine)
    return image, image_affine, np.asarray(on_grid) > 0
