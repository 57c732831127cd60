"""Registration to the MNI template and the way back to a subject's native grid."""

import numpy as np
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
