"""Registration to the MNI template and the way back to a subject's native grid."""

import ants
import numpy as np
import pytest
from scipy import ndimage

from arepas import preprocessing as prep
from arepas import registration as reg


def _oblique_lps_grid():
    angle = np.deg2rad(8)
    rot = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    shape = (64, 76, 60)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-3.0, -3.0, 3.2])
    affine[:3, 3] = -affine[:3, :3] @ (np.array(shape) / 2) + [3.0, -15.0, 12.0]
    return shape, affine


def test_native_to_template_and_back_lines_up(tmp_path):
    template, t_affine, mask = reg.load_template("mni152")
    fixed, f_affine = reg.template_on_grid(template, t_affine, (4.0, 4.0, 4.0))
    shape, affine = _oblique_lps_grid()
    native = prep.resample(template, t_affine, shape, affine)
    description = reg.register(native, affine, fixed, f_affine, "affine", tmp_path, seed=0)
    warped = reg.apply_forward(native, affine, fixed.shape, f_affine, description, tmp_path)
    brain = fixed > 0.3
    assert np.corrcoef(warped[brain], fixed[brain])[0, 1] > 0.9

    # A blob placed in template space comes back where the same world point lies natively.
    blob = np.zeros(fixed.shape, np.float32)
    centre = np.array(fixed.shape) // 2
    blob[tuple(slice(c - 1, c + 2) for c in centre)] = 1.0
    back = reg.apply_inverse(blob, f_affine, shape, affine, description, tmp_path)
    assert back.shape == shape
    found = np.array(ndimage.center_of_mass(back))
    world_found = affine @ [*found, 1.0]
    world_placed = f_affine @ [*centre, 1.0]
    # The simulated subject is the template itself, so the registration is near identity.
    assert np.linalg.norm(world_found[:3] - world_placed[:3]) < 4.0


def _larger_subject():
    # The template as a head 15% larger than it: an affine registration scales, a rigid one
    # cannot, so their transforms and warped images differ clearly.
    template, t_affine, _ = reg.load_template("mni152")
    fixed, f_affine = reg.template_on_grid(template, t_affine, (4.0, 4.0, 4.0))
    scaled = t_affine.copy()
    scaled[:3, :3] *= 1.15
    shape, affine = _oblique_lps_grid()
    return prep.resample(template, scaled, shape, affine), affine, fixed, f_affine


def _linear_part(path):
    return np.asarray(ants.read_transform(str(path)).parameters)[:9].reshape(3, 3)


def test_a_rerun_with_another_transform_replaces_the_old_one(tmp_path):
    native, affine, fixed, f_affine = _larger_subject()

    def warped(description):
        return reg.apply_forward(native, affine, fixed.shape, f_affine, description, tmp_path)

    first = reg.register(native, affine, fixed, f_affine, "syn", tmp_path, seed=0)
    assert any(name.endswith("Warp.nii.gz") for name in first["fwdtransforms"])
    syn = warped(first)
    # The same subject preprocessed again into the same folder, now with a rigid transform.
    again = reg.register(native, affine, fixed, f_affine, "rigid", tmp_path, seed=0)
    assert again["transform"] == "rigid"
    # Only the rigid transform is left: no warp field of the SyN run, no scratch folder.
    listed = set(again["fwdtransforms"]) | set(again["invtransforms"])
    assert {p.name for p in tmp_path.iterdir()} == listed
    assert not any(name.endswith(".nii.gz") for name in listed)
    # The matrix on disk is the rigid one (no scaling), not the SyN run's affine stage, which
    # found the 15% larger head and has the same file name.
    assert np.linalg.det(_linear_part(tmp_path / again["fwdtransforms"][0])) == pytest.approx(
        1.0, abs=0.02
    )
    rigid = warped(again)
    brain = fixed > 0.3
    assert np.abs(rigid - syn)[brain].mean() > 0.05 * np.abs(syn[brain]).mean()


def test_an_affine_rerun_overwrites_a_rigid_transform_of_the_same_name(tmp_path):
    # Rigid and affine both write 0GenericAffine.mat: the old code kept the first one.
    native, affine, fixed, f_affine = _larger_subject()
    rigid = reg.register(native, affine, fixed, f_affine, "rigid", tmp_path, seed=0)
    before = (tmp_path / rigid["fwdtransforms"][0]).read_bytes()
    scaled = reg.register(native, affine, fixed, f_affine, "affine", tmp_path, seed=0)
    assert scaled["fwdtransforms"] == rigid["fwdtransforms"]
    assert (tmp_path / scaled["fwdtransforms"][0]).read_bytes() != before
    # The affine transform (template points to subject points) recovers the 15% larger head.
    matrix = _linear_part(tmp_path / scaled["fwdtransforms"][0])
    assert np.linalg.det(matrix) == pytest.approx(1.15**3, rel=0.05)
