"""The procedural phantom: determinism, physiological plausibility, label topology, files and the CLI."""

from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from calid_lightning.data.phantom import (
    PhantomConfig,
    generate_subject,
    subject_seed,
    write_dataset,
    write_subject,
)
from calid_lightning.data.phantom.cli import main as phantom_main
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY

UNIT = PhantomConfig(size=(48, 48), frames=6, dense_slices=32, dense_spacing=3.0)
SMALL = PhantomConfig(size=(64, 64), frames=6)


@pytest.fixture(scope="module")
def cohort():
    """A few small subjects per pathology that the plausibility tests share."""
    plan = [("NOR", 1), ("NOR", 2), ("NOR", 3), ("DCM", 4), ("HCM", 5), ("MINF", 6), ("ARV", 7)]
    config = {"size": (80, 80), "pixel_spacing": 1.9, "frames": 6}
    return [generate_subject(seed, PhantomConfig(**config, pathologies=(p,))) for p, seed in plan]


def _lv_volumes(subject) -> np.ndarray:
    dx, dy, dz = subject.dense_spacing
    return np.count_nonzero(subject.labels == LV_CAVITY, axis=(0, 1, 2)) * dx * dy * dz / 1000.0


def test_same_seed_gives_identical_arrays_and_different_seeds_differ():
    a, b, c = generate_subject(11, UNIT), generate_subject(11, UNIT), generate_subject(12, UNIT)
    for name in ("image", "labels", "sparse_image", "sparse_labels", "affine", "sparse_affine"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.params == b.params
    assert not np.array_equal(a.labels, c.labels)
    assert not np.allclose(a.image, c.image)


def test_subject_seeds_are_distinct_per_dataset_and_index():
    seeds = {subject_seed(s, i) for s in (0, 1, 9999) for i in range(1, 50)}
    assert len(seeds) == 3 * 49


def test_unit_subject_shapes_types_and_speed():
    generate_subject(0, UNIT)  # warm-up (imports, caches)
    start = time.perf_counter()
    s = generate_subject(1, UNIT)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"unit subject took {elapsed:.2f} s"
    assert s.image.shape == (48, 48, 32, 6) and s.image.dtype == np.float32
    assert s.labels.shape == s.image.shape and s.labels.dtype == np.uint8
    assert set(np.unique(s.labels)) == {0, LV_CAVITY, MYOCARDIUM, RV_CAVITY}
    assert np.isfinite(s.image).all() and s.image.min() >= 0
    n_sparse = s.sparse_image.shape[2]
    assert n_sparse == (32 - 1 - s.sparse_offset) // UNIT.sparse_factor + 1
    assert s.spacing[2] == pytest.approx(UNIT.dense_spacing * UNIT.sparse_factor)


def test_sparse_stack_is_an_exact_subsample_of_the_dense_truth():
    s = generate_subject(3, SMALL)
    kept = s.sparse_offset + s.sparse_factor * np.arange(s.sparse_image.shape[2])
    np.testing.assert_array_equal(s.sparse_image, s.image[:, :, kept])
    np.testing.assert_array_equal(s.sparse_labels, s.labels[:, :, kept])
    # The dense affine puts dense slice offset + k*j where the sparse affine puts sparse slice j.
    for j in range(len(kept)):
        np.testing.assert_allclose(s.sparse_affine @ [5, 7, j, 1], s.affine @ [5, 7, kept[j], 1], atol=1e-9)


def test_volumes_and_ejection_fraction_are_physiological_and_match_params(cohort):
    for s in cohort:
        lv = _lv_volumes(s)
        p = s.params
        assert p["edv_ml"] == pytest.approx(lv[0]) and p["esv_ml"] == pytest.approx(lv[s.es_frame])
        ef = 100 * (lv[0] - lv[s.es_frame]) / lv[0]
        assert p["ef_percent"] == pytest.approx(ef)
        lo, hi = {"NOR": (52, 68), "DCM": (15, 45), "HCM": (60, 85), "MINF": (20, 50), "ARV": (45, 65)}[
            s.pathology
        ]
        assert lo <= ef <= hi, f"{s.pathology} seed {s.seed}: EF {ef:.1f} %"
        if s.pathology == "NOR":
            assert 100 <= lv[0] <= 170 and 35 <= lv[s.es_frame] <= 75, (lv[0], lv[s.es_frame])
        if s.pathology == "DCM":
            assert lv[0] > 180
    nor_ef = [c.params["ef_percent"] for c in cohort if c.pathology == "NOR"]
    by_group = {c.pathology: c.params["ef_percent"] for c in cohort}
    assert by_group["DCM"] < min(nor_ef) < max(nor_ef) < by_group["HCM"]


def test_end_systole_is_the_volume_minimum_at_32_to_42_percent_of_the_cycle(cohort):
    for s in cohort:
        lv = _lv_volumes(s)
        assert int(np.argmin(lv)) == s.es_frame
        assert 0.32 <= s.es_frame / s.image.shape[3] <= 0.42
        assert s.ed_frame == 0 and int(np.argmax(lv)) in (0, len(lv) - 1)


def test_ed_wall_thickness(cohort):
    for s in cohort:
        thick = s.params["wall_thickness_mid_measured_mm"]
        if s.pathology in ("NOR", "ARV"):
            assert 6.0 <= thick <= 12.0, (s.seed, thick)
        if s.pathology == "HCM":
            assert thick > 13.0
        assert 3.5 <= s.params["wall_thickness_apex_mm"] <= 9.0


def _mid_slices(s, frame: int = 0) -> list[int]:
    """Dense slices around the middle of the LV in ``frame`` (where the myocardial ring must be closed)."""
    lv = np.count_nonzero(s.labels[..., frame] == LV_CAVITY, axis=(0, 1))
    z = np.flatnonzero(lv)
    lo, hi = z[0], z[-1]
    return list(range(lo + (hi - lo) * 2 // 5, lo + (hi - lo) * 3 // 5 + 1))


def test_myocardium_surrounds_the_lv_cavity_in_mid_slices(cohort):
    for s in cohort:
        for frame in (s.ed_frame, s.es_frame):
            for z in _mid_slices(s, frame):
                lab = s.labels[:, :, z, frame]
                lv = lab == LV_CAVITY
                assert lv.any()
                ring = ndimage.binary_dilation(lv) & ~lv
                assert not np.any(lab[ring] == 0), f"seed {s.seed} z {z}: LV cavity touches background"
                assert ndimage.label(lv)[1] == 1


def test_rv_is_a_crescent_beside_the_lv(cohort):
    for s in cohort:
        z = _mid_slices(s)[len(_mid_slices(s)) // 2]
        lab = s.labels[:, :, z, 0]
        lv, rv = lab == LV_CAVITY, lab == RV_CAVITY
        assert rv.sum() > 0.15 * lv.sum()
        centre = np.array(ndimage.center_of_mass(lv))
        epi_radius = np.sqrt((lv | (lab == MYOCARDIUM)).sum() / np.pi)
        pts = np.argwhere(rv) - centre
        angles = np.sort(np.arctan2(pts[:, 1], pts[:, 0]))
        gaps = np.diff(np.concatenate([angles, angles[:1] + 2 * np.pi]))
        coverage = np.degrees(2 * np.pi - gaps.max())
        assert 60 <= coverage <= 300, f"seed {s.seed}: RV spans {coverage:.0f} deg around the LV"
        # A crescent wrapping the LV: its centroid lies beyond the LV epicardium yet near it.
        offset = np.linalg.norm(np.array(ndimage.center_of_mass(rv)) - centre)
        assert 0.7 * epi_radius < offset < 3 * epi_radius
        # The RV touches the septal myocardium.
        assert np.any(lab[ndimage.binary_dilation(rv)] == MYOCARDIUM)


def test_written_files_open_in_nibabel_and_simpleitk_with_consistent_geometry(tmp_path: Path):
    sitk = pytest.importorskip("SimpleITK")
    s = generate_subject(5, UNIT)
    folder = write_subject(s, tmp_path, 7)
    name = "patient007"
    assert folder == tmp_path / name
    info = dict(line.split(": ", 1) for line in (folder / "Info.cfg").read_text().splitlines())
    assert info["ED"] == "1" and info["ES"] == str(s.es_frame + 1) and info["Group"] == s.pathology
    assert info["NbFrame"] == "6"
    sparse = nib.load(folder / f"{name}_4d.nii.gz")
    dense = nib.load(folder / f"{name}_dense_4d.nii.gz")
    dense_gt = nib.load(folder / f"{name}_dense_gt_4d.nii.gz")
    np.testing.assert_allclose(sparse.header.get_zooms()[:3], s.spacing, rtol=1e-5)
    np.testing.assert_allclose(dense.header.get_zooms()[:3], s.dense_spacing, rtol=1e-5)
    assert sparse.header.get_zooms()[3] == pytest.approx(s.frame_duration_ms, rel=1e-5)
    np.testing.assert_allclose(sparse.affine, s.sparse_affine, atol=1e-4)
    np.testing.assert_allclose(sparse.get_qform(), sparse.get_sform(), atol=1e-4)
    assert not np.allclose(sparse.affine[:3, :3], np.diag(np.diag(sparse.affine[:3, :3])))  # oblique
    kept = s.sparse_offset + s.sparse_factor * np.arange(sparse.shape[2])
    np.testing.assert_array_equal(sparse.get_fdata(), dense.get_fdata()[:, :, kept])
    gt = np.asarray(dense_gt.dataobj)
    assert np.count_nonzero(gt == 3) == np.count_nonzero(s.labels == LV_CAVITY)  # ACDC: 3 = LV cavity
    assert np.count_nonzero(gt == 1) == np.count_nonzero(s.labels == RV_CAVITY)  # ACDC: 1 = RV cavity
    for frame in (s.ed_frame, s.es_frame):
        stem = folder / f"{name}_frame{frame + 1:02d}"
        img, lab = nib.load(f"{stem}.nii.gz"), nib.load(f"{stem}_gt.nii.gz")
        np.testing.assert_array_equal(np.asarray(lab.dataobj), gt[:, :, kept, frame])
        itk = sitk.ReadImage(str(stem) + ".nii.gz")
        np.testing.assert_allclose(itk.GetSpacing(), img.header.get_zooms(), rtol=1e-5)
        assert itk.GetSize() == img.shape
    itk4 = sitk.ReadImage(str(folder / f"{name}_4d.nii.gz"))
    np.testing.assert_allclose(itk4.GetSpacing()[:3], s.spacing, rtol=1e-5)
    params = __import__("json").loads((folder / f"{name}_params.json").read_text())
    assert params["sparse_offset"] == s.sparse_offset and params["seed"] == 5


def test_write_dataset_caches_subjects(tmp_path: Path):
    cfg = PhantomConfig(size=(32, 32), frames=2, dense_slices=20, dense_spacing=4.0)
    first = write_dataset(tmp_path, 2, seed=3, config=cfg)
    stamp = (first[0] / "patient001_4d.nii.gz").stat().st_mtime_ns
    again = write_dataset(tmp_path, 2, seed=3, config=cfg)
    assert again == first and (first[0] / "patient001_4d.nii.gz").stat().st_mtime_ns == stamp
    write_dataset(tmp_path, 1, seed=4, config=cfg)  # another seed regenerates
    assert (first[0] / "patient001_4d.nii.gz").stat().st_mtime_ns != stamp


def test_cli_writes_the_acdc_layout(tmp_path: Path):
    out = tmp_path / "ph"
    argv = ["--out", str(out), "--subjects", "2", "--seed", "1", "--frames", "3", "--size", "32", "40"]
    argv += [
        "--dense-slices",
        "17",
        "--dense-spacing",
        "5",
        "--pathologies",
        "NOR,DCM",
        "--breath-hold-mm",
        "2",
    ]
    assert phantom_main(argv) == 0
    for i in (1, 2):
        d = out / f"patient{i:03d}"
        names = {p.name for p in d.iterdir()}
        base = {
            "Info.cfg",
            f"{d.name}_4d.nii.gz",
            f"{d.name}_dense_4d.nii.gz",
            f"{d.name}_dense_gt_4d.nii.gz",
        }
        assert (
            base | {f"{d.name}_params.json", f"{d.name}_frame01.nii.gz", f"{d.name}_frame01_gt.nii.gz"}
            <= names
        )
        assert nib.load(d / f"{d.name}_4d.nii.gz").shape[:2] == (32, 40)
    with pytest.raises(SystemExit):
        phantom_main(["--out", str(out), "--pathologies", "XYZ"])


def test_thin_truth_and_breath_hold_change_only_the_acquired_stack():
    base = generate_subject(9, PhantomConfig(**{**UNIT.__dict__, "truth": "thin", "slice_profile": None}))
    kept = base.sparse_offset + base.sparse_factor * np.arange(base.sparse_image.shape[2])
    np.testing.assert_array_equal(base.sparse_image, base.image[:, :, kept])
    thick = generate_subject(9, PhantomConfig(**{**UNIT.__dict__, "truth": "thin", "slice_profile": 8.0}))
    np.testing.assert_allclose(thick.image, base.image, atol=1e-6)
    np.testing.assert_array_equal(thick.sparse_labels, base.labels[:, :, kept])
    assert not np.allclose(thick.sparse_image, base.sparse_image, atol=0.02)
    shifted = generate_subject(9, PhantomConfig(**{**UNIT.__dict__, "breath_hold_shift_mm": 3.0}))
    np.testing.assert_array_equal(shifted.labels, base.labels)
    assert not np.array_equal(shifted.sparse_labels, base.sparse_labels)
    assert np.abs(np.array(shifted.params["breath_hold_shifts_mm"])).max() <= 6.0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="pathologies"):
        PhantomConfig(pathologies=("FOO",))
    with pytest.raises(ValueError, match="sparse_factor"):
        PhantomConfig(sparse_factor=0)
    with pytest.raises(ValueError, match="size"):
        PhantomConfig(size=(8, 8))
