"""Synthetic demo cohorts: chest CT with vessel trees and infections, T1 brain MRI with strokes.

Every phantom is rendered at the world (RAS mm) positions of the requested grid's voxel centres,
so a subject (seed) has the same anatomy in world space whatever the scan grid: orientation,
spacing and oblique tilt only change how that anatomy is sampled. Three random streams per seed
(anatomy, lesions, scanner noise) keep a subject's healthy and lesioned versions identical outside
the lesions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform
from scipy import ndimage

__all__ = [
    "Phantom",
    "brain_t1_phantom",
    "demo_grid",
    "demo_phantom",
    "load_mni152",
    "lung_ct_phantom",
    "native_grid",
]

AIR_HU = -1000.0
BLOOD_HU = 40.0
# Most voxels in a slab processed at once; bounds memory on clinical grids (512 x 512 x 256).
_SLAB_VOXELS = 1 << 20


@dataclass
class Phantom:
    """One synthetic scan: image, lesion mask (0/1), voxel->world affine, generation facts.

    ``roi`` is the true organ mask (lungs for CT, brain for MRI) on the same grid.
    ``info`` holds only JSON-friendly values.
    """

    image: np.ndarray
    lesion: np.ndarray
    affine: np.ndarray
    info: dict
    roi: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------
# Scan grids


def native_grid(
    rng: np.random.Generator,
    fov_mm: tuple[float, float, float],
    spacing_mm: tuple[float, float, float],
    orientation: str,
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0),
    max_oblique_deg: float = 10.0,
) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and voxel->world (RAS mm) affine of a grid covering ``fov_mm`` around ``center_mm``.

    ``orientation``: "RAS" (axes along +x, +y, +z), "LPS" (first two axes flipped, the DICOM
    convention) or "oblique" (RAS rotated about a random axis by up to ``max_oblique_deg``, as from
    a tilted gantry). ``rng`` is used only for "oblique".
    """
    spacing = np.asarray(spacing_mm, dtype=float)
    fov = np.asarray(fov_mm, dtype=float)
    if spacing.shape != (3,) or fov.shape != (3,) or np.any(spacing <= 0) or np.any(fov <= 0):
        raise ValueError(f"need positive spacings and fields of view, got {spacing_mm}, {fov_mm}")
    shape = tuple(int(max(1, round(f / s))) for f, s in zip(fov, spacing, strict=True))
    if orientation == "RAS":
        linear = np.diag(spacing)
    elif orientation == "LPS":
        linear = np.diag(spacing * [-1.0, -1.0, 1.0])
    elif orientation == "oblique":
        axis = rng.standard_normal(3)
        angle = math.radians(rng.uniform(-max_oblique_deg, max_oblique_deg))
        linear = _axis_angle_rotation(axis, angle) @ np.diag(spacing)
    else:
        raise ValueError(f"orientation must be 'RAS', 'LPS' or 'oblique', got {orientation!r}")
    affine = np.eye(4)
    affine[:3, :3] = linear
    # The middle of the grid (between voxel centres when a size is even) sits on center_mm.
    affine[:3, 3] = np.asarray(center_mm, dtype=float) - linear @ ((np.array(shape) - 1) / 2.0)
    return shape, affine


def _axis_angle_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


def _euler_rotation(angles_rad: np.ndarray) -> np.ndarray:
    rx, ry, rz = (_axis_angle_rotation(np.eye(3)[i], a) for i, a in enumerate(angles_rad))
    return rz @ ry @ rx


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.linalg.norm(affine[:3, :3], axis=0)


def _slabs(shape: tuple[int, int, int]):
    step = max(1, _SLAB_VOXELS // max(1, shape[0] * shape[1]))
    for k0 in range(0, shape[2], step):
        yield k0, min(shape[2], k0 + step)


def _box_world(affine: np.ndarray, lo, hi) -> list[np.ndarray]:
    """World x, y, z (float32, broadcast) of the voxel centres in index box [lo, hi)."""
    i = np.arange(lo[0], hi[0], dtype=np.float32)[:, None, None]
    j = np.arange(lo[1], hi[1], dtype=np.float32)[None, :, None]
    k = np.arange(lo[2], hi[2], dtype=np.float32)[None, None, :]
    a = affine.astype(np.float32)
    return [a[r, 0] * i + a[r, 1] * j + a[r, 2] * k + a[r, 3] for r in range(3)]


def _slab_world(affine: np.ndarray, shape, k0: int, k1: int) -> list[np.ndarray]:
    return _box_world(affine, (0, 0, k0), (shape[0], shape[1], k1))


def _index_box(affine_inv: np.ndarray, shape, centre_mm: np.ndarray, reach_mm: float, vox):
    """Voxel index box [lo, hi) holding a world ball; a ball of radius R spans R/spacing voxels
    along each grid axis whatever the grid's rotation."""
    c = affine_inv[:3, :3] @ centre_mm + affine_inv[:3, 3]
    lo = np.maximum(np.floor(c - reach_mm / vox), 0).astype(int)
    hi = np.minimum(np.ceil(c + reach_mm / vox) + 1, shape).astype(int)
    return lo, hi


# --------------------------------------------------------------------------------------------
# Smooth random fields, fixed in world space


@dataclass(frozen=True)
class _Field:
    data: np.ndarray  # unit-variance lattice values
    origin: np.ndarray  # mm position of data[0, 0, 0]
    spacing: float


def _random_field(rng: np.random.Generator, lo, hi, spacing: float, sigma_mm: float) -> _Field:
    lo = np.asarray(lo, dtype=float)
    n = np.ceil((np.asarray(hi, dtype=float) - lo) / spacing).astype(int) + 1
    data = ndimage.gaussian_filter(rng.standard_normal(tuple(n), dtype=np.float32),
                                   sigma_mm / spacing, mode="wrap")
    data /= max(float(data.std()), 1e-6)
    return _Field(data, lo, float(spacing))


def _sample(f: _Field, x, y, z, order: int = 1) -> np.ndarray:
    coords = np.stack([(np.asarray(c, dtype=np.float32) - np.float32(o)) / np.float32(f.spacing)
                       for c, o in zip((x, y, z), f.origin, strict=True)])
    return ndimage.map_coordinates(f.data, coords, order=order, mode="nearest", prefilter=False)


def _soft(sdf, width: float):
    """Partial-volume occupancy of the region sdf < 0, ramping over ``width`` mm."""
    return np.clip(0.5 - sdf / np.float32(width), 0.0, 1.0)


def _smax(a, b, k: float):
    """Smooth maximum (rounded corner of radius ~k) of two signed distances."""
    h = np.clip(0.5 - 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h + k * h * (1.0 - h)


def _smin(a, b, k: float):
    return -_smax(-a, -b, k)


def _mix(base, value, weight):
    return base + (value - base) * weight


def _wrap(angle):
    return (angle + np.pi) % (2 * np.pi) - np.pi


def _segment_distance(x, y, z, a, b, near_mm: float = 15.0):
    """Distance (mm) from points to segment ab; exact within ``near_mm`` of the segment's
    bounding box, the (smaller) distance to that box further out, which is all a smooth
    minimum or a partial-volume ramp needs there and saves most of the work."""
    a, b = np.asarray(a, dtype=np.float32), np.asarray(b, dtype=np.float32)
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    gap = [np.maximum(np.maximum(np.float32(lo[i]) - c, c - np.float32(hi[i])), 0.0)
           for i, c in enumerate((x, y, z))]
    dist = np.sqrt(gap[0] ** 2 + gap[1] ** 2 + gap[2] ** 2)
    near = dist < near_mm
    if near.any():
        ab = b - a
        px, py, pz = x[near] - a[0], y[near] - a[1], z[near] - a[2]
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / np.float32(ab @ ab), 0.0, 1.0)
        dist[near] = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
    return dist


def _polyline_distance(x, y, z, points):
    d = None
    for a, b in zip(points[:-1], points[1:], strict=True):
        s = _segment_distance(x, y, z, a, b)
        d = s if d is None else np.minimum(d, s)
    return d


def _scanner_noise(rng: np.random.Generator, shape, affine, sigma_px: float) -> np.ndarray:
    """Unit-variance noise, in-plane correlated, generated in RAS voxel order and then laid out
    like the grid: grids that differ only by axis flips or permutations get the same noise at
    the same world position."""
    ornt = io_orientation(affine)
    canonical_shape = [0, 0, 0]
    for axis, (world_axis, _) in enumerate(ornt):
        canonical_shape[int(world_axis)] = shape[axis]
    noise = rng.standard_normal(tuple(canonical_shape), dtype=np.float32)
    if sigma_px > 0:
        # A reconstruction kernel correlates noise within a slice, hardly across slices.
        for k in range(noise.shape[2]):
            noise[:, :, k] = ndimage.gaussian_filter(noise[:, :, k], sigma_px, mode="reflect")
        radius = int(4 * sigma_px + 0.5)
        kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
        kernel /= kernel.sum()
        noise /= np.float32((kernel**2).sum())  # 2D filter: variance factor is the 1D one squared
    return apply_orientation(noise, ornt_transform(axcodes2ornt("RAS"), ornt))


# --------------------------------------------------------------------------------------------
# Chest CT

# Grid extent (mm) an adult thorax needs along world x, y, z; smaller grids get a smaller body.
_THORAX_FIT_MM = np.array([350.0, 255.0, 285.0])


@dataclass
class _Thorax:
    """Subject anatomy in the adult frame (mm, origin mid-thorax, RAS axes)."""

    inspiration: float
    bx: float
    by_front: float
    by_back: float
    body_power: float
    wobble: np.ndarray  # (k, amplitude, phase) rows: low-order outline irregularity
    fat: float
    fat_hu: float
    muscle: float
    muscle_hu: float
    rib_thick: float
    rib_half_height: float
    rib_pitch: float
    rib_slope: float
    rib_phase: float
    spine_y: float
    spine_r: float
    med_x: float
    med_w: float
    heart_c: np.ndarray
    heart_axes: np.ndarray
    heart_angle: float
    dome_z: np.ndarray  # (right, left)
    dome_c: np.ndarray
    dome_depth: np.ndarray
    apex_z: np.ndarray
    apex_c: np.ndarray
    lung_hu: float
    texture_sd: float
    tubes: dict  # name -> (polyline points, radius)
    shape_field: _Field
    texture_field: _Field


def _make_thorax(rng: np.random.Generator) -> _Thorax:
    insp = rng.uniform(-1.0, 1.0)  # -1 shallow, +1 deep inspiration
    grow = 1.0 + 0.03 * insp
    by = rng.uniform(100.0, 116.0) * grow
    by_back = by * rng.uniform(0.9, 0.97)
    spine_r = rng.uniform(16.0, 20.0)
    spine_y = -by_back + rng.uniform(52.0, 60.0)
    front = spine_y + spine_r  # anterior surface of the vertebral body

    def j(sd: float = 3.0) -> np.ndarray:
        return rng.normal(0.0, sd, 3)

    tx, ty = rng.uniform(-2.0, 4.0), front + rng.uniform(16.0, 22.0)
    carina = np.array([tx, ty, rng.uniform(40.0, 55.0)])
    tubes = {
        "trachea": (np.array([[tx, ty, 260.0], carina]), rng.uniform(8.0, 10.0)),
        "bronchus_r": (np.array([carina, carina + [24.0, -4.0, -18.0] + j(2)]), 7.0),
        "bronchus_l": (np.array([carina, carina + [-38.0, -4.0, -20.0] + j(2)]), 6.5),
        "esophagus": (np.array([[-6.0, front + 5.0, 260.0], [-10.0, front + 4.0, -200.0]]),
                      rng.uniform(6.0, 8.0)),
        "aorta": (np.array([[10.0, 25.0, -25.0] + j(), [10.0, 30.0, 40.0] + j(), [0.0, 8.0, 60.0],
                            [-20.0, front + 6.0, 45.0], [-18.0, front + 4.0, -200.0]]),
                  rng.uniform(11.0, 14.0)),
        "svc": (np.array([[25.0, 10.0, 260.0], [24.0, 14.0, 0.0] + j()]), rng.uniform(8.0, 11.0)),
        "pa_trunk": (np.array([[-8.0, 38.0, -20.0], [-10.0, 25.0, 25.0] + j()]),
                     rng.uniform(12.0, 15.0)),
    }
    split = tubes["pa_trunk"][0][-1]
    tubes["pa_r"] = (np.array([split, [28.0, 5.0, 22.0] + j()]), rng.uniform(8.0, 10.0))
    tubes["pa_l"] = (np.array([split, [-32.0, 2.0, 30.0] + j()]), rng.uniform(8.0, 10.0))
    dome_r = rng.uniform(-52.0, -42.0) - 10.0 * insp
    box_lo, box_hi = (-220.0, -170.0, -220.0), (220.0, 170.0, 280.0)
    return _Thorax(
        inspiration=float(insp),
        bx=rng.uniform(140.0, 160.0) * grow,
        by_front=by,
        by_back=by_back,
        body_power=rng.uniform(2.1, 2.6),
        wobble=np.stack([np.arange(2, 6), rng.uniform(0.0, 0.02, 4),
                         rng.uniform(0, 2 * np.pi, 4)], axis=1),
        fat=rng.uniform(4.0, 18.0),
        fat_hu=rng.uniform(-115.0, -85.0),
        muscle=rng.uniform(6.0, 10.0),
        muscle_hu=rng.uniform(35.0, 55.0),
        rib_thick=rng.uniform(8.0, 11.0),
        rib_half_height=rng.uniform(4.5, 6.5),
        rib_pitch=rng.uniform(24.0, 30.0),
        rib_slope=rng.uniform(0.3, 0.4),
        rib_phase=rng.uniform(0.0, 30.0),
        spine_y=spine_y,
        spine_r=spine_r,
        med_x=rng.uniform(-4.0, 4.0),
        med_w=rng.uniform(9.0, 14.0),
        heart_c=np.array([rng.uniform(-22.0, -10.0), rng.uniform(14.0, 26.0),
                          rng.uniform(-50.0, -38.0)]),
        heart_axes=np.array([rng.uniform(50.0, 60.0), rng.uniform(40.0, 48.0),
                             rng.uniform(44.0, 52.0)]),
        heart_angle=rng.uniform(0.35, 0.7),
        dome_z=np.array([dome_r, dome_r - rng.uniform(5.0, 14.0)]),
        dome_c=np.array([[rng.uniform(45.0, 60.0), rng.uniform(0.0, 20.0)],
                         [-rng.uniform(45.0, 60.0), rng.uniform(0.0, 20.0)]]),
        dome_depth=rng.uniform(45.0, 62.0, 2),
        apex_z=rng.uniform(118.0, 135.0, 2),
        apex_c=np.array([[rng.uniform(45.0, 55.0), rng.uniform(-15.0, 0.0)],
                         [-rng.uniform(45.0, 55.0), rng.uniform(-15.0, 0.0)]]),
        # Published lung parenchyma sits near -850 HU; deeper breath, more air, lower HU.
        lung_hu=-850.0 - 50.0 * insp,
        texture_sd=rng.uniform(12.0, 25.0),
        tubes=tubes,
        shape_field=_random_field(rng, box_lo, box_hi, 6.0, 12.0),
        texture_field=_random_field(rng, box_lo, box_hi, 3.0, 3.0),
    )


def _chest_wall(t: _Thorax, x, y, z):
    """Polar angle, depth below the skin along the radius, and per-angle layer thicknesses."""
    theta = np.arctan2(y, x)
    c, s = np.abs(np.cos(theta)), np.sin(theta)
    b = np.where(s < 0, np.float32(t.by_back), np.float32(t.by_front))
    p = np.float32(t.body_power)
    radius = ((c / np.float32(t.bx)) ** p + (np.abs(s) / b) ** p) ** (-1.0 / p)
    wobble = 1.0 + sum(np.float32(a) * np.cos(np.float32(k) * theta + np.float32(ph))
                       for k, a, ph in t.wobble)
    radius = radius * wobble * (1.0 + 0.02 * np.tanh(z / 150.0))
    depth = radius - np.hypot(x, y)
    back = _wrap(theta + np.pi / 2)  # angle from the posterior midline
    fat = np.float32(t.fat) * (0.75 + 0.5 * c**2)
    muscle = (np.float32(t.muscle) + 24.0 * np.exp(-((back / 0.45) ** 2))  # paraspinal
              + 9.0 * np.exp(-(((np.abs(back) - 2.4) / 0.35) ** 2)))  # pectoral
    return theta, back, depth, fat, muscle


def _lung_geometry(t: _Thorax, x, y, z):
    """Signed distances (mm, negative inside) of the thoracic cavity, mediastinum and lungs."""
    theta, back, depth, fat, muscle = _chest_wall(t, x, y, z)
    wall = 2.0 + fat + muscle + np.float32(t.rib_thick)
    cavity = wall - depth
    band = np.abs(x - np.float32(t.med_x)) - np.float32(t.med_w)
    med = _smin(band, _heart_sdf(t, x, y, z) - 3.0, 10.0)
    axes = {name: _polyline_distance(x, y, z, pts) for name, (pts, _) in t.tubes.items()}
    for name in ("aorta", "svc", "pa_trunk", "esophagus", "trachea"):
        med = _smin(med, axes[name] - np.float32(t.tubes[name][1] + 3.0), 6.0)
    med = _smin(med, np.hypot(x, y - np.float32(t.spine_y)) - np.float32(t.spine_r + 5.0), 6.0)
    bumps = 4.0 * _sample(t.shape_field, x, y, z)
    lungs = []
    for side in range(2):
        dome = _dome(t, side, x, y)
        apex = np.float32(t.apex_z[side]) - 0.02 * (
            (x - np.float32(t.apex_c[side, 0])) ** 2 + (y - np.float32(t.apex_c[side, 1])) ** 2)
        wrong_side = (x - np.float32(t.med_x)) * (1.0 if side == 1 else -1.0)
        s = _smax(cavity + 1.5, -med + bumps * 0.5, 4.0)
        s = _smax(s, dome + bumps - z, 6.0)
        s = _smax(s, z - apex, 8.0)
        lungs.append(_smax(s, wrong_side, 2.0))
    dome_mix = np.clip(0.5 + (x - np.float32(t.med_x)) / 30.0, 0.0, 1.0)
    diaphragm = dome_mix * _dome(t, 0, x, y) + (1.0 - dome_mix) * _dome(t, 1, x, y)
    return {"theta": theta, "back": back, "depth": depth, "fat": fat, "muscle": muscle,
            "wall": wall, "cavity": cavity, "lung_r": lungs[0], "lung_l": lungs[1],
            "lung": np.minimum(lungs[0], lungs[1]), "diaphragm": diaphragm, "tube_axes": axes}


def _dome(t: _Thorax, side: int, x, y):
    # Saturating drop: domes rise centrally and fall into the costophrenic recesses.
    dx = x - np.float32(t.dome_c[side, 0])
    dy = (y - np.float32(t.dome_c[side, 1])) * 0.9
    return (np.float32(t.dome_z[side])
            - np.float32(t.dome_depth[side]) * (1.0 - np.exp(-(dx**2 + dy**2) / 70.0**2)))


def _heart_sdf(t: _Thorax, x, y, z):
    ca, sa = math.cos(t.heart_angle), math.sin(t.heart_angle)
    px, py, pz = x - np.float32(t.heart_c[0]), y - np.float32(t.heart_c[1]), z - np.float32(
        t.heart_c[2])
    # Long axis turned towards the left anterior chest (apex of the heart).
    u = (-ca * px + sa * py) / np.float32(t.heart_axes[0])
    v = (sa * px + ca * py) / np.float32(t.heart_axes[1])
    w = pz / np.float32(t.heart_axes[2])
    return (np.sqrt(u**2 + v**2 + w**2) - 1.0) * np.float32(t.heart_axes.min())


def _thorax_slab(t: _Thorax, x, y, z, edge: float):
    """Adult-frame points -> HU of everything but lung, lung occupancy, lung parenchyma HU and
    distances to the axes of the large tubes."""
    g = _lung_geometry(t, x, y, z)
    depth, fat, muscle, back = g["depth"], g["fat"], g["muscle"], g["back"]
    hu = np.full(x.shape, AIR_HU, dtype=np.float32)
    hu = _mix(hu, 30.0, _soft(-depth, edge))  # skin
    hu = _mix(hu, np.float32(t.fat_hu), _soft(2.0 - depth, edge))
    hu = _mix(hu, np.float32(t.muscle_hu), _soft(2.0 + fat - depth, edge))
    # Scapulae: thin bone plates in the posterior chest wall, upper thorax only.
    scap_depth = 2.0 + fat + 0.55 * muscle
    scap = (_soft(np.abs(depth - scap_depth) - 2.0, edge)
            * _soft(np.abs(np.abs(back) - 0.95) - 0.4, 0.05) * _soft(-z - 10.0, edge))
    hu = _mix(hu, 550.0, scap)
    hu = _mix(hu, -80.0, _soft(g["cavity"], edge))  # mediastinal fat fills the cavity
    # Abdomen below the diaphragm (liver on the right).
    hu = _mix(hu, 52.0 + 6.0 * np.tanh(x / 30.0), _soft(g["cavity"], edge) * _soft(
        z - g["diaphragm"], edge))
    hu = _ribs(t, hu, x, y, z, g, edge)
    hu = _mix(hu, BLOOD_HU, _soft(_heart_sdf(t, x, y, z), edge))
    for name in ("aorta", "svc", "pa_trunk", "pa_r", "pa_l", "esophagus"):
        r = np.float32(t.tubes[name][1])
        hu = _mix(hu, BLOOD_HU if name != "esophagus" else 35.0,
                  _soft(g["tube_axes"][name] - r, edge))
    hu = _spine(t, hu, x, y, z, edge)
    lung_frac = _soft(g["lung"], edge)
    # Dependent (posterior) lung is denser: gravity on a supine patient.
    gravity = 35.0 * np.clip((40.0 - y) / 160.0, 0.0, 1.0)
    lung_hu = np.float32(t.lung_hu) + gravity
    inside = lung_frac > 0
    lung_hu[inside] += np.float32(t.texture_sd) * _sample(t.texture_field, x[inside], y[inside],
                                                           z[inside])
    return hu, lung_frac, lung_hu.astype(np.float32), g["tube_axes"]


def _ribs(t: _Thorax, hu, x, y, z, g, edge):
    along = np.abs(g["back"])
    centre_depth = g["wall"] - np.float32(t.rib_thick / 2)
    # Ribs run down and forward from the spine: the rib pattern's height shifts with the arc.
    phase = (z - np.float32(t.rib_phase) + np.float32(t.rib_slope * 120.0) * along) / np.float32(
        t.rib_pitch)
    dz = np.abs(phase - np.round(phase)) * np.float32(t.rib_pitch)
    dr = (g["depth"] - centre_depth) / np.float32(t.rib_thick / 2)
    rho = np.sqrt(dr**2 + (dz / np.float32(t.rib_half_height)) ** 2)
    sdf = (rho - 1.0) * np.float32(min(t.rib_thick / 2, t.rib_half_height))
    occupancy = _soft(sdf, edge)
    bone = 220.0 + 600.0 * np.clip((rho - 0.5) / 0.35, 0.0, 1.0)  # marrow inside a cortex
    rib_zone = _soft(np.abs(along - 1.35) - 1.05, 0.05)
    cartilage_zone = _soft(np.abs(along - 2.62) - 0.17, 0.05)
    hu = _mix(hu, bone, occupancy * rib_zone)
    hu = _mix(hu, 120.0, occupancy * cartilage_zone)
    rho = np.sqrt((x / 17.0) ** 2 + ((g["depth"] - centre_depth) / 6.0) ** 2)
    sternum = np.where(y > 0, (rho - 1.0) * 6.0, np.float32(100.0))
    ster_bone = 280.0 + 500.0 * np.clip((rho - 0.6) / 0.3, 0.0, 1.0)
    return _mix(hu, ster_bone, _soft(sternum, edge))


def _spine(t: _Thorax, hu, x, y, z, edge):
    sy, sr = np.float32(t.spine_y), np.float32(t.spine_r)
    body = np.hypot(x, y - sy) - sr
    # Intervertebral discs every ~28 mm between the bony vertebral bodies.
    disc = np.abs(((z + np.float32(t.rib_phase)) / 28.0) % 1.0 - 0.5) * 28.0 < 3.0
    bone = np.where(disc, np.float32(90.0), 260.0 + 500.0 * _soft(-(body + 2.0), 1.0))
    hu = _mix(hu, bone, _soft(body, edge))
    cy = sy - sr - 9.0
    canal = np.hypot(x, y - cy) - 7.5
    arch = np.maximum(np.maximum(canal - 5.5, -canal), y - cy - 3.0)
    spinous = np.maximum(np.abs(x) - 3.5, np.abs(y - (cy - 24.0)) - 12.0)
    # Transverse processes point back and out, towards the rib heads.
    ax_, ay_ = np.abs(x) - 8.0, y - (cy + 2.0)
    along = np.clip((ax_ * 18.0 - ay_ * 8.0) / (18.0**2 + 8.0**2), 0.0, 1.0)
    transverse = np.hypot(ax_ - along * 18.0, ay_ + along * 8.0) - 4.5
    posterior = np.minimum(np.minimum(arch, spinous), transverse)
    hu = _mix(hu, 550.0, _soft(posterior, edge))
    return _mix(hu, 20.0, _soft(canal, edge))


# Vessel and airway trees ---------------------------------------------------------------------


def _territory(rng: np.random.Generator, t: _Thorax, side: int, n: int, margin: float):
    """n random points inside one lung, at least ``margin`` mm from its surface."""
    sign = 1.0 if side == 0 else -1.0
    found = []
    total = 0
    for _ in range(100):
        if total >= n:
            return np.concatenate(found)[:n]
        pts = rng.uniform([0.0, -140.0, -160.0], [175.0, 130.0, 145.0], (4 * n, 3))
        pts[:, 0] *= sign
        x, y, z = (pts[:, i].astype(np.float32) for i in range(3))
        sdf = _lung_geometry(t, x, y, z)["lung_r" if side == 0 else "lung_l"]
        keep = pts[sdf < -margin]
        found.append(keep)
        total += len(keep)
    raise RuntimeError("could not place points inside the lung; is the anatomy degenerate?")


def _grow_tree(rng: np.random.Generator, root, radius: float, points: np.ndarray,
               min_radius: float, twig_radius: float | None):
    """Branching tree from ``root`` that supplies ``points``; returns segments (p0, p1, r0, r1).

    Each branch heads part-way to the centroid of the points it supplies, then splits them across
    their main spread; radii follow Murray's law (r^3 proportional to supplied territory).
    """
    segments = []
    n_total = len(points)
    stack = [(np.asarray(root, dtype=float), points)]
    while stack:
        start, pts = stack.pop()
        r = radius * (len(pts) / n_total) ** (1.0 / 3.0)
        centroid = pts.mean(axis=0)
        if len(pts) == 1 or r * (0.5 ** (1.0 / 3.0)) < min_radius:
            end = centroid
            segments.append((start, end, r, r))
            if twig_radius is not None:
                direction = end - start
                direction /= max(np.linalg.norm(direction), 1e-6)
                bend = direction + 0.15 * rng.standard_normal(3)
                tip = end + rng.uniform(6.0, 14.0) * bend / np.linalg.norm(bend)
                segments.append((end, tip, r, twig_radius))
            continue
        step = centroid - start
        dist = np.linalg.norm(step)
        end = start + step * rng.uniform(0.35, 0.6) + rng.normal(0.0, 0.06 * dist, 3)
        segments.append((start, end, r, r))
        centred = pts - centroid
        _, vectors = np.linalg.eigh(centred.T @ centred)
        order = np.argsort(centred @ vectors[:, -1])
        cut = int(np.clip(round(len(pts) * rng.uniform(0.3, 0.7)), 1, len(pts) - 1))
        stack.append((end, pts[order[:cut]]))
        stack.append((end, pts[order[cut:]]))
    return segments


def _thorax_trees(rng: np.random.Generator, t: _Thorax):
    """Pulmonary arteries and veins (solid) and intrapulmonary airways (walls and lumens)."""
    vessels, airways = [], []
    for side in range(2):
        sign = 1.0 if side == 0 else -1.0
        artery_root = t.tubes["pa_r" if side == 0 else "pa_l"][0][-1]
        vein_root = np.array([sign * rng.uniform(28.0, 36.0), rng.uniform(0.0, 12.0),
                              rng.uniform(-20.0, -8.0)])
        for root in (artery_root, vein_root):
            pts = _territory(rng, t, side, int(rng.integers(450, 650)), 2.0)
            # Hilar vessels ~4-5 mm radius, tapering to sub-millimetre twigs at the periphery.
            vessels += _grow_tree(rng, root, rng.uniform(4.0, 5.0), pts, 0.0,
                                  rng.uniform(0.3, 0.45))
        bronchus_end = t.tubes["bronchus_r" if side == 0 else "bronchus_l"][0][-1]
        pts = _territory(rng, t, side, int(rng.integers(70, 110)), 6.0)
        airways += _grow_tree(rng, bronchus_end, rng.uniform(5.0, 5.5), pts, 1.0, None)
    return vessels, airways


def _airway_wall(r):
    return 0.6 + 0.2 * r


def _render_tubes(soft, air, affine, segments, scale: float, offset: np.ndarray,
                  airway: bool) -> None:
    """Rasterise tapered tubes with partial volume, one bounding box per segment.

    Thinner than a voxel, a tube is smeared to voxel width with its contrast cut by the area
    ratio, so sub-voxel vessels appear as faint lines instead of vanishing or aliasing.
    """
    if not segments:
        return
    shape = soft.shape
    vox = _voxel_sizes(affine)
    edge = float(np.prod(vox) ** (1.0 / 3.0))
    inv = np.linalg.inv(affine)
    p0 = np.array([s[0] for s in segments]) * scale + offset
    p1 = np.array([s[1] for s in segments]) * scale + offset
    r0 = np.array([s[2] for s in segments]) * scale
    r1 = np.array([s[3] for s in segments]) * scale
    i0 = p0 @ inv[:3, :3].T + inv[:3, 3]
    i1 = p1 @ inv[:3, :3].T + inv[:3, 3]
    reach = (np.maximum(np.maximum(r0, r1), edge / 2) + edge)[:, None] / vox[None, :]
    lo = np.maximum(np.floor(np.minimum(i0, i1) - reach), 0).astype(int)
    hi = np.minimum(np.ceil(np.maximum(i0, i1) + reach) + 1, shape).astype(int)
    for n in np.flatnonzero(np.all(hi > lo, axis=1)):
        x, y, z = _box_world(affine, lo[n], hi[n])
        a, ab = p0[n].astype(np.float32), (p1[n] - p0[n]).astype(np.float32)
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * ab[0] + py * ab[1] + pz * ab[2]) / max(float(ab @ ab), 1e-6), 0.0, 1.0)
        d = np.sqrt((px - t * ab[0]) ** 2 + (py - t * ab[1]) ** 2 + (pz - t * ab[2]) ** 2)
        r = np.float32(r0[n]) + t * np.float32(r1[n] - r0[n])
        box = (slice(lo[n, 0], hi[n, 0]), slice(lo[n, 1], hi[n, 1]), slice(lo[n, 2], hi[n, 2]))
        outer = _tube_occupancy(d, r, edge)
        if airway:
            lumen = _tube_occupancy(d, r - _airway_wall(r / scale) * scale, edge)
            np.maximum(air[box], lumen, out=air[box])
            outer = np.clip(outer - lumen, 0.0, 1.0)
        np.maximum(soft[box], outer, out=soft[box])


def _tube_occupancy(d, r, edge: float):
    r = np.maximum(r, 0.0)
    smeared = np.maximum(r, np.float32(edge / 2))
    return (r / smeared) ** 2 * np.clip(0.5 - (d - smeared) / np.float32(edge), 0.0, 1.0)


# Lesions ----------------------------------------------------------------------------------------


def _make_lung_lesions(rng: np.random.Generator, t: _Thorax, scale: float):
    """1-6 peripheral, multifocal infection-like lesions, 5-50 mm across in world mm (positions
    and sizes returned in the adult frame)."""
    count = int(rng.integers(1, 7))
    diameters = np.exp(rng.uniform(np.log(5.0), np.log(50.0), count))
    # The first must show on any grid, whatever the others do.
    diameters[0] = max(diameters[0], rng.uniform(15.0, 50.0))
    diameters /= scale
    pool = np.concatenate([_territory(rng, t, side, 1500, 1.0) for side in range(2)])
    x, y, z = (pool[:, i].astype(np.float32) for i in range(3))
    geometry = _lung_geometry(t, x, y, z)
    depth, below_wall = -geometry["lung"], -geometry["cavity"]
    lesions = []
    for diameter in diameters:
        radius = diameter / 2
        # Infection foci sit under the costal pleura: centre inside the lung, close to the wall.
        ok = (depth > 0.3 * radius) & (below_wall < 0.3 * radius + 15.0)
        for other in lesions:
            gap = np.linalg.norm(pool - other["centre"], axis=1)
            ok &= gap > 1.4 * (radius + other["radius"]) + 3.0
        if not ok.any():
            ok = depth > 0.3 * radius  # large lesion or crowded lungs: anywhere that holds it
            for other in lesions:
                ok &= np.linalg.norm(pool - other["centre"], axis=1) > radius + other["radius"]
        if not ok.any():
            continue
        kind = "ground_glass" if rng.uniform() < 0.65 else "consolidation"
        # GGO about -700..-300 HU, consolidation about -100..+50 HU.
        ggo = kind == "ground_glass"
        target = rng.uniform(-700.0, -300.0) if ggo else rng.uniform(-100.0, 50.0)
        lesions.append({
            "kind": kind,
            "centre": pool[rng.choice(np.flatnonzero(ok))],
            "radius": float(radius),
            "target_hu": float(target),
            "field_offset": rng.uniform(-60.0, 60.0, 3),
        })
    return lesions


def _lesion_weight(t: _Thorax, lesion: dict, x, y, z):
    """Blend weight 0..1 of an irregular blob; the 0.5 level is the lesion border."""
    c, radius = lesion["centre"], lesion["radius"]
    px, py, pz = x - np.float32(c[0]), y - np.float32(c[1]), z - np.float32(c[2])
    # Read the shape field at a zoom that gives a few bumps around the outline at any size.
    zoom = np.float32(24.0 / radius)
    o = lesion["field_offset"]
    bump = _sample(t.shape_field, px * zoom + o[0], py * zoom + o[1], pz * zoom + o[2])
    reach = np.float32(radius) * (1.0 + 0.22 * np.clip(bump, -2, 2))
    rho = np.sqrt(px**2 + py**2 + pz**2) / reach
    soft_border = 0.3 if lesion["kind"] == "ground_glass" else 0.1
    w = np.clip((1.0 + soft_border - rho) / (2 * soft_border), 0.0, 1.0)
    return w * w * (3.0 - 2.0 * w)


# Main CT entry point --------------------------------------------------------------------------


def _body_scale(shape, affine) -> float:
    ornt = io_orientation(affine)
    fov = np.zeros(3)
    for axis, (world_axis, _) in enumerate(ornt):
        fov[int(world_axis)] = shape[axis] * _voxel_sizes(affine)[axis]
    return float(min(1.0, *(fov / _THORAX_FIT_MM)))


def lung_ct_phantom(seed: int, shape: tuple[int, int, int], affine: np.ndarray, lesions: bool,
                    body_scale: float | None = None) -> Phantom:
    """Chest CT (HU, float32) of subject ``seed`` on the given grid, with or without lesions.

    ``body_scale`` (1 = adult) defaults to the largest scale <= 1 whose thorax, lungs apex to
    base, fits the grid's extent; pass it explicitly for grids that cover only part of the chest.
    """
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=float)
    if len(shape) != 3 or affine.shape != (4, 4):
        raise ValueError(f"need a 3D shape and a 4x4 affine, got {shape} and {affine.shape}")
    anatomy_rng = np.random.default_rng([seed, 1])
    lesion_rng = np.random.default_rng([seed, 2])
    noise_rng = np.random.default_rng([seed, 3])

    t = _make_thorax(anatomy_rng)
    scale = _body_scale(shape, affine) if body_scale is None else float(body_scale)
    if not scale > 0:
        raise ValueError(f"body_scale must be positive, got {body_scale}")
    offset = anatomy_rng.normal(0.0, 4.0, 3)  # patient position on the table
    vessels, airways = _thorax_trees(anatomy_rng, t)
    noise_sd = anatomy_rng.uniform(10.0, 30.0)
    noise_blur = anatomy_rng.uniform(0.0, 0.8)
    found = _make_lung_lesions(lesion_rng, t, scale) if lesions else []

    vox = _voxel_sizes(affine)
    edge = float(np.prod(vox) ** (1.0 / 3.0))
    # Occupancies need little precision: half floats halve their memory on clinical grids.
    soft = np.zeros(shape, dtype=np.float16)
    air = np.zeros(shape, dtype=np.float16)
    _render_tubes(soft, air, affine, vessels, scale, offset, airway=False)
    _render_tubes(soft, air, affine, airways, scale, offset, airway=True)

    image = np.empty(shape, dtype=np.float32)
    lesion_mask = np.zeros(shape, dtype=np.uint8)
    roi = np.zeros(shape, dtype=bool)
    inv = np.linalg.inv(affine)
    voxels_per_lesion = np.zeros(len(found), dtype=np.int64)
    boxes = [_index_box(inv, shape, les["centre"] * scale + offset,
                        1.9 * les["radius"] * scale + edge, vox) for les in found]
    for k0, k1 in _slabs(shape):
        world = _slab_world(affine, shape, k0, k1)
        x, y, z = ((w - np.float32(o)) / np.float32(scale) for w, o in zip(world, offset,
                                                                               strict=True))
        del world
        hu, lung_frac, lung_hu, tube_axes = _thorax_slab(t, x, y, z, edge / scale)
        vessel = soft[:, :, k0:k1]
        lung_hu = _mix(lung_hu, BLOOD_HU, vessel)
        for n, (les, (lo, hi)) in enumerate(zip(found, boxes, strict=True)):
            b0, b1 = max(lo[2], k0), min(hi[2], k1)
            if b1 <= b0:
                continue
            sub = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(b0 - k0, b1 - k0))
            w = _lesion_weight(t, les, x[sub], y[sub], z[sub])
            # Fluid replaces alveolar air: scale every voxel's air content towards the target, so
            # vessels (no air) keep their value and stay visible through ground glass.
            keep_air = (60.0 - les["target_hu"]) / (60.0 - t.lung_hu)
            c, o = les["centre"], les["field_offset"]
            # Finer-grained texture inside the lesion, which its edge map does not describe.
            tex = 1.0 + 0.06 * _sample(t.texture_field, *((v[sub] - np.float32(c[i])) * 1.7 + o[i]
                                                            for i, v in enumerate((x, y, z))))
            factor = 1.0 - w * (1.0 - np.clip(keep_air * tex, 0.0, 1.0))
            lung_hu[sub] = 60.0 - (60.0 - lung_hu[sub]) * factor
            inside = (w > 0.5) & (lung_frac[sub] > 0.5)
            lesion_mask[sub[0], sub[1], b0:b1] |= inside.astype(np.uint8)
            voxels_per_lesion[n] += int(inside.sum())
        lung_hu = _mix(lung_hu, AIR_HU, air[:, :, k0:k1])
        hu = _mix(hu, lung_hu, lung_frac)
        for name in ("trachea", "bronchus_r", "bronchus_l"):
            r = np.float32(t.tubes[name][1])
            d = tube_axes[name]
            hu = _mix(hu, 40.0, _soft(d - r, edge / scale))
            hu = _mix(hu, AIR_HU, _soft(d - (r - 2.0), edge / scale))
        image[:, :, k0:k1] = hu
        roi[:, :, k0:k1] = lung_frac > 0.5
    del soft, air
    noise = _scanner_noise(noise_rng, shape, affine, noise_blur)
    noise *= np.float32(noise_sd)
    image += noise
    del noise
    np.clip(image, -1024.0, 3071.0, out=image)

    voxel_ml = float(np.prod(vox)) / 1000.0
    lesion_info = [{
        "kind": les["kind"],
        "centre_mm": [float(v) for v in les["centre"] * scale + offset],
        "diameter_mm": round(2 * les["radius"] * scale, 2),
        "target_hu": round(les["target_hu"], 1),
        "volume_ml": round(int(nv) * voxel_ml, 3),
    } for les, nv in zip(found, voxels_per_lesion, strict=True)]
    info = {
        "kind": "lung_ct",
        "seed": int(seed),
        "body_scale": round(scale, 4),
        "inspiration": round(t.inspiration, 3),
        "lung_hu": round(t.lung_hu, 1),
        "noise_sd_hu": round(float(noise_sd), 2),
        "vessel_segments": len(vessels),
        "airway_segments": len(airways),
        "lesion_count": len(found),
        "lesion_kinds": [les["kind"] for les in found],
        "lesion_volumes_ml": [les["volume_ml"] for les in lesion_info],
        "lesions": lesion_info,
    }
    return Phantom(image, lesion_mask, affine.copy(), info, roi)


# --------------------------------------------------------------------------------------------
# Brain T1 MRI


def load_mni152() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MNI152 2009a T1 template (float32), its affine and brain mask (bool), 1 mm, from nilearn.

    nilearn ships these files in the package, so nothing is downloaded.
    """
    from nilearn.datasets import load_mni152_brain_mask, load_mni152_template

    template = load_mni152_template(resolution=1)
    mask = load_mni152_brain_mask(resolution=1)
    return (np.asarray(template.get_fdata(dtype=np.float32)), np.asarray(template.affine),
            np.asarray(mask.get_fdata(dtype=np.float32)) > 0.5)


# Deep lacune sites in MNI mm (right hemisphere; mirrored for the left).
_LACUNE_SITES = {
    "putamen": (25.0, 2.0, 2.0),
    "caudate": (13.0, 12.0, 10.0),
    "thalamus": (12.0, -18.0, 6.0),
    "internal_capsule": (22.0, -8.0, 8.0),
    "centrum_semiovale": (26.0, -12.0, 32.0),
    "corona_radiata": (24.0, 12.0, 28.0),
}


def _template_box(template_affine, lo_mm, hi_mm, shape):
    inv = np.linalg.inv(template_affine)
    corners = np.array([[a, b, c] for a in (lo_mm[0], hi_mm[0]) for b in (lo_mm[1], hi_mm[1])
                        for c in (lo_mm[2], hi_mm[2])])
    idx = corners @ inv[:3, :3].T + inv[:3, 3]
    lo = np.maximum(np.floor(idx.min(0)), 0).astype(int)
    hi = np.minimum(np.ceil(idx.max(0)) + 1, shape).astype(int)
    return lo, hi


def _stroke_lesions(rng: np.random.Generator, template, template_affine, template_mask):
    """Chronic infarcts as a soft weight map on the template grid, plus their description."""
    weight = np.zeros(template.shape, dtype=np.float32)
    mask = template_mask.astype(np.float32)
    voxel_ml = abs(np.linalg.det(template_affine[:3, :3])) / 1000.0
    described = []
    wedge = rng.uniform() < 0.75
    n_lacunes = int(rng.integers(0, 4)) if wedge else int(rng.integers(1, 4))
    if wedge:
        side = float(rng.choice([-1.0, 1.0]))
        apex = np.array([side * rng.uniform(26.0, 34.0), rng.uniform(-12.0, 8.0),
                         rng.uniform(0.0, 12.0)])
        axis = np.array([side, rng.uniform(-0.45, 0.35), rng.uniform(-0.05, 0.45)])
        axis /= np.linalg.norm(axis)
        target_ml = float(np.exp(rng.uniform(np.log(5.0), np.log(60.0))))
        lo, hi = _template_box(template_affine, [min(side * 8, side * 85), -100.0, -45.0],
                               [max(side * 8, side * 85), 70.0, 80.0], template.shape)
        x, y, z = _box_world(template_affine, lo, hi)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        rel = [x - np.float32(apex[0]), y - np.float32(apex[1]), z - np.float32(apex[2])]
        along = rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]
        e1 = np.cross(axis, [0.0, 0.0, 1.0])
        e1 /= np.linalg.norm(e1)
        e2 = np.cross(axis, e1)
        safe = np.maximum(along, 1.0)
        u = (rel[0] * e1[0] + rel[1] * e1[1] + rel[2] * e1[2]) / safe
        v = (rel[0] * e2[0] + rel[1] * e2[1] + rel[2] * e2[2]) / safe
        score = np.sqrt(u**2 + (v * np.float32(rng.uniform(0.8, 1.3))) ** 2)
        bumps = _sample(_random_field(rng, [-100, -130, -80], [100, 100, 110], 3.0, 6.0), x, y, z)
        valid = (mask[box] > 0.5) & (along > 4.0) & (x * side > 8.0)
        # Threshold the (noisy) angular score where the wedge holds the target volume.
        n_target = int(target_ml / voxel_ml)
        scores = score[valid]
        if scores.size:
            tau = float(np.partition(scores, min(n_target, scores.size - 1))[
                min(n_target, scores.size - 1)])
            score = score + 0.3 * tau * bumps
            scores = score[valid]
            tau = float(np.partition(scores, min(n_target, scores.size - 1))[
                min(n_target, scores.size - 1)])
            w = np.clip(0.5 + (tau - score) / 0.05, 0.0, 1.0) * mask[box]
            w *= np.clip(0.5 + (along - 4.0) / 3.0, 0.0, 1.0) * (x * side > 8.0)
            weight[box] = np.maximum(weight[box], w)
            described.append({
                "kind": "mca_wedge",
                "hemisphere": "right" if side > 0 else "left",
                "apex_mni_mm": [round(float(a), 1) for a in apex],
                "template_volume_ml": round(float((w > 0.5).sum() * voxel_ml), 2),
            })
    sites = rng.permutation(list(_LACUNE_SITES))[:n_lacunes]
    for n, site in enumerate(sites):
        side = float(rng.choice([-1.0, 1.0]))
        centre = np.array(_LACUNE_SITES[site]) * [side, 1.0, 1.0] + rng.uniform(-3.0, 3.0, 3)
        # 3-15 mm; the only lesion of a subject is made big enough to show at 3 mm spacing.
        diameter = rng.uniform(8.0, 15.0) if (n == 0 and not wedge) else rng.uniform(3.0, 15.0)
        axes = diameter / 2 * rng.uniform(0.75, 1.25, 3)
        rot = _euler_rotation(rng.uniform(-np.pi, np.pi, 3))
        reach = axes.max() * 1.5 + 3.0
        lo, hi = _template_box(template_affine, centre - reach, centre + reach, template.shape)
        x, y, z = _box_world(template_affine, lo, hi)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        rel = [x - np.float32(centre[0]), y - np.float32(centre[1]), z - np.float32(centre[2])]
        local = [sum(rel[i] * np.float32(rot[i, k]) for i in range(3)) / np.float32(axes[k])
                 for k in range(3)]
        rho = np.sqrt(local[0] ** 2 + local[1] ** 2 + local[2] ** 2)
        bumps = _sample(_random_field(rng, centre - reach - 6, centre + reach + 6, 1.5, 2.5),
                        x, y, z)
        rho = rho * (1.0 + 0.15 * np.clip(bumps, -2, 2))
        w = np.clip(0.5 + (1.0 - rho) * np.float32(axes.mean() / 1.2), 0.0, 1.0) * mask[box]
        weight[box] = np.maximum(weight[box], w)
        described.append({
            "kind": "lacune",
            "site": str(site),
            "hemisphere": "right" if side > 0 else "left",
            "centre_mni_mm": [round(float(c), 1) for c in centre],
            "diameter_mm": round(float(diameter), 2),
            "template_volume_ml": round(float((w > 0.5).sum() * voxel_ml), 3),
        })
    return weight, described


BRAIN_WARP_MM = (3.0, 6.0)
BRAIN_WARP_SMOOTHNESS_MM = 20.0


def brain_t1_phantom(seed: int, shape: tuple[int, int, int], affine: np.ndarray, lesions: bool,
                     template: np.ndarray, template_affine: np.ndarray,
                     template_mask: np.ndarray,
                     warp_mm: tuple[float, float] = BRAIN_WARP_MM,
                     warp_smoothness_mm: float = BRAIN_WARP_SMOOTHNESS_MM) -> Phantom:
    """T1 MRI (arbitrary non-negative units) of subject ``seed``: the template warped by a random
    affine and smooth deformation, with bias field, contrast change, Rician noise and, if asked,
    chronic stroke lesions defined in template space. The deformation's per-axis sd is drawn
    from ``warp_mm`` (low, high) and is smooth over ``warp_smoothness_mm``."""
    shape = tuple(int(s) for s in shape)
    affine = np.asarray(affine, dtype=float)
    template = np.asarray(template, dtype=np.float32)
    template_affine = np.asarray(template_affine, dtype=float)
    template_mask = np.asarray(template_mask, dtype=bool)
    anatomy_rng = np.random.default_rng([seed, 1])
    lesion_rng = np.random.default_rng([seed, 2])
    noise_rng = np.random.default_rng([seed, 3])

    centre = template_affine[:3, :3] @ np.argwhere(template_mask).mean(0) + template_affine[:3, 3]
    angles = np.radians(anatomy_rng.uniform(-10.0, 10.0, 3))
    rotation = _euler_rotation(angles)
    scales = np.clip(anatomy_rng.uniform(0.92, 1.08) * anatomy_rng.uniform(0.97, 1.03, 3),
                     0.9, 1.1)
    shift = anatomy_rng.normal(0.0, 4.0, 3)
    # World -> template: undo the subject's affine (template = S^-1 (world)), then a smooth warp.
    back_linear = np.diag(1.0 / scales) @ rotation.T
    t_lo = template_affine[:3, 3] - 25.0
    t_hi = template_affine[:3, :3] @ (np.array(template.shape) - 1) + template_affine[:3, 3] + 25
    # Individual anatomy that an affine registration cannot remove: ventricles, sulci and gyri
    # of real brains still lie millimetres apart after it. Per-axis displacements of 3-6 mm
    # (sd), smooth over about 20 mm, give each registered subject its own anatomy; with the
    # 1.5-3 mm over 16 mm used before, every subject was the template within a 3 mm voxel, so
    # the training mean image was as good a healthy reconstruction as any (BENCHMARKS.md,
    # "Does the translator use its edges?"; docs/studies.md, "Individual anatomy in the demo
    # brain cohort, and translator epochs").
    warp_range = warp_mm
    warp_mm = anatomy_rng.uniform(warp_range[0], warp_range[1])
    warp = [_random_field(anatomy_rng, t_lo, t_hi, 8.0, warp_smoothness_mm) for _ in range(3)]
    bias_coef = anatomy_rng.normal(0.0, 0.08, 9)
    gamma = anatomy_rng.uniform(0.8, 1.25)
    gain = anatomy_rng.uniform(700.0, 1300.0)
    noise_rel = anatomy_rng.uniform(0.01, 0.035)
    csf = float(np.percentile(template[template_mask], 0.5))
    texture = _random_field(anatomy_rng, t_lo, t_hi, 3.0, 3.0)

    if lesions:
        weight, described = _stroke_lesions(lesion_rng, template, template_affine, template_mask)
    else:
        weight, described = None, []

    image = np.empty(shape, dtype=np.float32)
    lesion_mask = np.zeros(shape, dtype=np.uint8)
    roi = np.zeros(shape, dtype=bool)
    t_inv = np.linalg.inv(template_affine).astype(np.float32)
    mask_f = template_mask.astype(np.float32)
    for k0, k1 in _slabs(shape):
        wx, wy, wz = _slab_world(affine, shape, k0, k1)
        rel = [wx - np.float32(centre[0] + shift[0]), wy - np.float32(centre[1] + shift[1]),
               wz - np.float32(centre[2] + shift[2])]
        q = [sum(np.float32(back_linear[r, c]) * rel[c] for c in range(3)) + np.float32(centre[r])
             for r in range(3)]
        dq = [np.float32(warp_mm) * _sample(f, *q) for f in warp]
        q = [a + b for a, b in zip(q, dq, strict=True)]
        ijk = np.stack([sum(t_inv[r, c] * q[c] for c in range(3)) + t_inv[r, 3] for r in range(3)])
        values = ndimage.map_coordinates(template, ijk, order=1, mode="constant", cval=0.0)
        inside = ndimage.map_coordinates(mask_f, ijk, order=1, mode="constant", cval=0.0) > 0.5
        if weight is not None:
            w = np.clip(ndimage.map_coordinates(weight, ijk, order=1, mode="constant", cval=0.0),
                        0.0, 1.0)
            core = np.float32(csf) * (1.0 + 0.1 * _sample(texture, *q))
            values = _mix(values, core, w)
            lesion_mask[:, :, k0:k1] = (w > 0.5) & inside
        # Smooth multiplicative bias: exp of a quadratic polynomial in world position (dm).
        px, py, pz = (c / 100.0 for c in rel)
        terms = (px, py, pz, px * px, py * py, pz * pz, px * py, px * pz, py * pz)
        bias = np.exp(sum(np.float32(c) * term for c, term in zip(bias_coef, terms, strict=True)))
        signal = np.clip(values, 0.0, None) ** np.float32(gamma)
        image[:, :, k0:k1] = np.float32(gain) * signal * bias
        roi[:, :, k0:k1] = inside
    sigma = np.float32(noise_rel * gain)
    # Magnitude images carry Rician noise: |signal + complex Gaussian|.
    real = image + sigma * _scanner_noise(noise_rng, shape, affine, 0.0)
    imag = sigma * _scanner_noise(noise_rng, shape, affine, 0.0)
    image = np.sqrt(real**2 + imag**2).astype(np.float32)

    voxel_ml = float(np.prod(_voxel_sizes(affine))) / 1000.0
    info = {
        "kind": "brain_t1",
        "seed": int(seed),
        "rotation_deg": [round(float(a), 2) for a in np.degrees(angles)],
        "scale": [round(float(s), 4) for s in scales],
        "shift_mm": [round(float(s), 2) for s in shift],
        "warp_mm": round(float(warp_mm), 2),
        "gamma": round(float(gamma), 3),
        "gain": round(float(gain), 1),
        "noise_sd": round(float(sigma), 2),
        "lesion_count": len(described),
        "lesion_kinds": [d["kind"] for d in described],
        "lesion_volume_ml": round(int(lesion_mask.sum()) * voxel_ml, 3),
        "lesions": described,
    }
    return Phantom(image, lesion_mask, affine.copy(), info, roi)


# --------------------------------------------------------------------------------------------
# The bundled demo cohorts

DEMO_ORIENTATIONS = ("RAS", "LPS", "oblique")


# Added to a brain subject's seed so that it never shares one with a lung subject.
_DEMO_SEED_OFFSET = {"lung_ct": 0, "brain_t1": 50_000}


# Voxel sizes (mm) of the demo scans. "coarse" grids keep the CPU demo within minutes (None: a
# brain scan's voxel sizes are drawn per subject from _COARSE_BRAIN_MM); "clinical" grids are
# those of the published cohorts' kind, thin-slice chest CT and 1 mm T1 MRI, for the full-size
# configuration: on a 1 mm working grid a coarse scan's finest detail is interpolation.
DEMO_SCAN_GRIDS = {
    "coarse": {"lung_ct": (2.3, 2.3, 5.0), "brain_t1": None},
    "clinical": {"lung_ct": (0.8, 0.8, 2.5), "brain_t1": (1.0, 1.0, 1.0)},
}
_COARSE_BRAIN_MM = (2.4, 3.2)
_DEMO_FOV_MM = {"lung_ct": (300.0, 240.0, 220.0), "brain_t1": (180.0, 216.0, 180.0)}
_DEMO_CENTRE_MM = {"lung_ct": (0.0, 0.0, 0.0), "brain_t1": (0.0, -18.0, 18.0)}


def demo_grid(dataset: str, number: int, demo_seed: int, scan_grid: str = "coarse"
              ) -> tuple[int, str, tuple[int, int, int], np.ndarray]:
    """Seed, orientation (cycling through RAS, LPS and oblique), shape and affine of subject
    ``number``'s demo scan. The grid's random draws do not depend on scan_grid, so a subject's
    anatomy, lesions, orientation and tilt are the same on either grid."""
    if dataset not in _DEMO_SEED_OFFSET:
        raise ValueError(f"no demo generator for dataset '{dataset}'")
    if scan_grid not in DEMO_SCAN_GRIDS:
        raise ValueError(f"scan_grid must be one of {sorted(DEMO_SCAN_GRIDS)}, got {scan_grid!r}")
    seed = int(demo_seed) * 100_003 + _DEMO_SEED_OFFSET[dataset] + int(number)
    rng = np.random.default_rng(seed)
    orientation = DEMO_ORIENTATIONS[number % 3]
    spacing = DEMO_SCAN_GRIDS[scan_grid][dataset]
    if dataset == "brain_t1":
        # Drawn on either grid, so that the oblique tilt that follows is the same.
        drawn = tuple(rng.uniform(*_COARSE_BRAIN_MM, 3).round(2))
        spacing = spacing or drawn
    shape, affine = native_grid(rng, _DEMO_FOV_MM[dataset], spacing, orientation,
                                center_mm=_DEMO_CENTRE_MM[dataset])
    return seed, orientation, shape, affine


def demo_phantom(dataset: str, number: int, demo_seed: int, lesions: bool,
                 mni: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                 scan_grid: str = "coarse", **brain_options) -> Phantom:
    """Subject ``number`` of a demo cohort (its position among the dataset's rows of the demo
    sheet, arepas.cohort.demo_numbers) on its scan grid (:func:`demo_grid`). ``mni`` is
    :func:`load_mni152`'s result, needed for brain_t1; ``brain_options`` go to
    :func:`brain_t1_phantom` (e.g. another ``warp_mm``)."""
    if dataset == "brain_t1" and mni is None:
        raise ValueError("demo_phantom needs the MNI template (load_mni152()) for brain_t1")
    seed, orientation, shape, affine = demo_grid(dataset, number, demo_seed, scan_grid)
    if dataset == "lung_ct":
        phantom = lung_ct_phantom(seed, shape, affine, lesions=lesions)
    else:  # brain_t1, the only other dataset demo_grid accepts
        phantom = brain_t1_phantom(seed, shape, affine, lesions, *mni, **brain_options)
    phantom.info["orientation"] = orientation
    return phantom
