"""Readers on tiny files in each exact layout: shapes, spacing, affine, label conventions, ED/ES, laziness."""

from __future__ import annotations

import logging

import nibabel as nib
import numpy as np
import pytest

from calid_lightning.data.readers.registry import SubjectReader, make_reader, read_all
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY, DataError
from layouts import (
    FRAME_S,
    SHAPE,
    SPACING,
    heart_image,
    heart_labels,
    write_acdc_subject,
    write_folder_subject,
    write_mnms_csv,
    write_mnms_subject,
    write_nifti,
    write_ukbb_subject,
)

LV_VOXEL = (4, 4, 0)  # centre of the LV cavity in heart_labels' default 12 x 10 plane
RV_VOXEL = (10, 4, 0)
MYO_VOXEL = (1, 4, 0)


def oblique_affine(spacing=SPACING) -> np.ndarray:
    """A rotated affine whose slice axis points down (reversed slice order) with the given column norms."""
    c, s = np.cos(0.3), np.sin(0.3)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, -1.0]])
    affine = np.eye(4)
    affine[:3, :3] = rotation * np.asarray(spacing)
    affine[:3, 3] = (10.0, -20.0, 55.0)
    return affine


def test_heart_fixture_has_each_class_at_the_probe_voxels() -> None:
    labels = heart_labels()
    assert labels[(*LV_VOXEL, 0)] == LV_CAVITY
    assert labels[(*MYO_VOXEL, 0)] == MYOCARDIUM
    assert labels[(*RV_VOXEL, 0)] == RV_CAVITY


def test_acdc_geometry_frames_and_header_values(tmp_path) -> None:
    affine = oblique_affine()
    write_acdc_subject(tmp_path, 1, ed=1, es=3, affine=affine)
    reader = make_reader("acdc", tmp_path)
    assert isinstance(reader, SubjectReader)
    assert reader.list_subjects() == ["patient001"]
    subject = reader.read("patient001")
    assert subject.shape == SHAPE
    assert subject.image.dtype == np.float32
    np.testing.assert_allclose(subject.spacing, SPACING, rtol=1e-6)
    np.testing.assert_allclose(subject.affine, affine, atol=1e-5)
    assert (subject.ed_frame, subject.es_frame) == (0, 2)
    assert subject.labelled_frames == (0, 2)
    assert subject.frame_duration_ms == pytest.approx(FRAME_S * 1000, rel=1e-5)
    assert subject.meta["group"] == "NOR" and subject.meta["height_cm"] == 180.0


def test_acdc_labels_are_remapped_to_internal(tmp_path) -> None:
    directory = write_acdc_subject(tmp_path, 1, ed=1, es=3)
    raw = np.asarray(nib.load(directory / "patient001_frame01_gt.nii.gz").dataobj)
    assert (raw[LV_VOXEL], raw[MYO_VOXEL], raw[RV_VOXEL]) == (3, 2, 1)  # ACDC: 3 LV, 2 myo, 1 RV
    labels = make_reader("acdc", tmp_path).read("patient001").labels
    assert labels is not None and labels.dtype == np.uint8 and labels.shape == SHAPE
    ed = labels[..., 0]
    assert (ed[LV_VOXEL], ed[MYO_VOXEL], ed[RV_VOXEL]) == (LV_CAVITY, MYOCARDIUM, RV_CAVITY)
    assert labels[..., 2].any() and not labels[..., [1, 3, 4]].any()


def test_acdc_database_folder_with_training_and_testing(tmp_path) -> None:
    write_acdc_subject(tmp_path / "training", 1)
    write_acdc_subject(tmp_path / "testing", 101, labels=False)
    reader = make_reader("acdc", tmp_path)
    assert reader.list_subjects() == ["patient001", "patient101"]
    test_subject = reader.read("patient101")
    assert test_subject.meta["split"] == "testing"
    assert test_subject.labels is None and test_subject.labelled_frames == ()


def test_phantom_dense_truth_and_params(tmp_path) -> None:
    write_acdc_subject(tmp_path, 3, ed=1, es=3, dense_factor=4, params={"edv_ml": 131.5, "seed": 3})
    subject = make_reader("phantom", tmp_path).read("patient003")
    assert subject.dense_image is not None and subject.dense_labels is not None
    assert subject.dense_image.shape == (12, 10, 13, 5)
    np.testing.assert_allclose(subject.dense_image[:, :, ::4], subject.image, atol=1e-6)
    assert subject.dense_spacing == pytest.approx((1.37, 1.37, 2.5))
    np.testing.assert_allclose(subject.dense_affine[:3, 2], subject.affine[:3, 2] / 4, atol=1e-6)
    np.testing.assert_array_equal(subject.dense_labels[:, :, ::4, 0], subject.labels[..., 0])
    assert subject.dense_labels[(*LV_VOXEL, 1)] == LV_CAVITY
    assert subject.meta["edv_ml"] == 131.5 and subject.meta["seed"] == 3
    dense, _, spacing = subject.stack(dense=True)
    assert dense is subject.dense_image and spacing == subject.dense_spacing


def test_mnms_zero_based_frames_labels_and_csv_columns(tmp_path) -> None:
    root = tmp_path / "OpenDataset"
    write_mnms_subject(root, "A1B2C3", ed=1, es=3)
    write_mnms_subject(root, "D4E5F6", split="Validation", ed=0, es=2)
    write_mnms_subject(root, "U0U0U0", split="Training/Unlabeled", labels=False)
    write_mnms_csv(root / "info.csv", {"A1B2C3": (1, 3), "D4E5F6": (0, 2)})
    reader = make_reader("mnms", root)
    assert reader.list_subjects() == ["A1B2C3", "D4E5F6"]
    subject = reader.read("A1B2C3")
    assert (subject.ed_frame, subject.es_frame, subject.labelled_frames) == (1, 3, (1, 3))
    ed = subject.labels[..., 1]
    assert (ed[LV_VOXEL], ed[MYO_VOXEL], ed[RV_VOXEL]) == (LV_CAVITY, MYOCARDIUM, RV_CAVITY)
    assert (
        subject.meta["Vendor"] == "A" and subject.meta["Centre"] == "1" and subject.meta["Pathology"] == "NOR"
    )
    assert reader.read("D4E5F6").meta["split"] == "Validation"
    with_unlabeled = make_reader("mnms", root, include_unlabeled=True, info_csv=root / "info.csv")
    assert with_unlabeled.list_subjects() == ["A1B2C3", "D4E5F6", "U0U0U0"]
    unlabeled = with_unlabeled.read("U0U0U0")
    assert unlabeled.labels is None and unlabeled.meta["ed_es_known"] is False


def test_mnms_rejects_acdc_label_order(tmp_path) -> None:
    write_mnms_subject(tmp_path, "SWAP01", acdc_order=True)
    write_mnms_csv(tmp_path / "info.csv", {"SWAP01": (0, 2)})
    with pytest.raises(DataError, match=r"SWAP01_sa_gt\.nii\.gz.*swapped"):
        make_reader("mnms", tmp_path).read("SWAP01")


def test_ukbb_es_is_min_lv_volume_of_4d_segmentation(tmp_path) -> None:
    write_ukbb_subject(tmp_path, "1000001", es=3)
    subject = make_reader("ukbb", tmp_path).read("1000001")
    assert (subject.ed_frame, subject.es_frame) == (0, 3)
    assert subject.labelled_frames == tuple(range(SHAPE[3]))
    assert subject.spacing == pytest.approx((1.8, 1.8, 10.0))
    assert subject.frame_duration_ms == pytest.approx(30.0)
    assert subject.labels[(*RV_VOXEL, 0)] == RV_CAVITY


def test_ukbb_frame_duration_in_seconds_without_header_unit(tmp_path) -> None:
    directory = write_ukbb_subject(tmp_path, "1000001", seg=None)
    image = heart_image(heart_labels())
    write_nifti(directory / "sa.nii.gz", image, (1.8, 1.8, 10.0, 0.025), time_unit="unknown")
    assert make_reader("ukbb", tmp_path).read("1000001").frame_duration_ms == pytest.approx(25.0)


def test_ukbb_ed_es_segmentations_and_no_segmentation(tmp_path) -> None:
    write_ukbb_subject(tmp_path, "1000002", es=2, seg="ed_es")
    write_ukbb_subject(tmp_path, "1000003", seg=None)
    reader = make_reader("ukbb", tmp_path)
    subject = reader.read("1000002")
    assert (subject.es_frame, subject.labelled_frames) == (2, (0, 2))
    assert subject.labels[(*LV_VOXEL, 2)] == LV_CAVITY and not subject.labels[..., 1].any()
    bare = reader.read("1000003")
    assert bare.labels is None and bare.meta["es_frame_known"] is False


def test_nifti_folder_3d_4d_label_suffix_and_map(tmp_path) -> None:
    write_folder_subject(tmp_path, "stack3d", shape=(12, 10, 4), labels=False)
    write_folder_subject(tmp_path, "cine", es=3, label_suffix="_seg", acdc_order=True)
    reader = make_reader("nifti_folder", tmp_path, label_suffix="_seg", label_map="acdc")
    assert reader.list_subjects() == ["cine", "stack3d"]
    stack = reader.read("stack3d")
    assert stack.shape == (12, 10, 4, 1) and stack.labels is None and stack.es_frame == 0
    cine = reader.read("cine")
    assert (cine.ed_frame, cine.es_frame, cine.meta["es_frame_known"]) == (0, 3, True)
    assert cine.labels[(*LV_VOXEL, 0)] == LV_CAVITY and cine.labels[(*RV_VOXEL, 0)] == RV_CAVITY


@pytest.mark.parametrize(
    ("unit", "value", "expected"), [("sec", 0.04, 40.0), ("msec", 25.0, 25.0), ("unknown", 1.0, None)]
)
def test_frame_duration_follows_header_time_unit(tmp_path, unit, value, expected) -> None:
    image = np.arange(6 * 5 * 3 * 4, dtype=np.float32).reshape(6, 5, 3, 4) + 1
    write_nifti(tmp_path / "a.nii.gz", image, (1.5, 1.25, 8.0, value), time_unit=unit)
    subject = make_reader("nifti_folder", tmp_path).read("a")
    assert subject.frame_duration_ms == (pytest.approx(expected) if expected else None)
    assert subject.spacing == pytest.approx((1.5, 1.25, 8.0))


def test_lenient_read_all_skips_bad_subject_with_a_warning(tmp_path, caplog) -> None:
    write_acdc_subject(tmp_path, 1)
    write_acdc_subject(tmp_path, 2, info={"ED": None})
    write_acdc_subject(tmp_path, 3)
    reader = make_reader("acdc", tmp_path)
    with pytest.raises(DataError, match=r"patient002.*Info\.cfg.*'ED'"):
        read_all(reader)
    with caplog.at_level(logging.WARNING):
        subjects = read_all(reader, lenient=True)
    assert [s.subject_id for s in subjects] == ["patient001", "patient003"]
    assert "patient002" in caplog.text and "Info.cfg" in caplog.text and "missing key 'ED'" in caplog.text
    lenient_reader = make_reader("acdc", tmp_path, lenient=True)
    assert len(read_all(lenient_reader)) == 2


def test_listing_opens_no_image(tmp_path, monkeypatch) -> None:
    write_acdc_subject(tmp_path / "acdc", 1)
    write_mnms_subject(tmp_path / "mnms", "A1B2C3")
    write_ukbb_subject(tmp_path / "ukbb", "1000001")
    (tmp_path / "ukbb" / "2000000").mkdir()  # a folder without sa.nii.gz is not a subject
    write_folder_subject(tmp_path / "folder", "cine")

    def forbidden(*args, **kwargs):
        raise AssertionError("list_subjects must not load images")

    monkeypatch.setattr(nib, "load", forbidden)
    assert make_reader("acdc", tmp_path / "acdc").list_subjects() == ["patient001"]
    assert make_reader("mnms", tmp_path / "mnms").list_subjects() == ["A1B2C3"]
    assert make_reader("ukbb", tmp_path / "ukbb").list_subjects() == ["1000001"]
    assert make_reader("nifti_folder", tmp_path / "folder").list_subjects() == ["cine"]


def test_make_reader_rejects_unknown_layout_options_and_missing_root(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown data layout 'kaggle'"):
        make_reader("kaggle", tmp_path)
    with pytest.raises(ValueError, match="invalid options"):
        make_reader("ukbb", tmp_path, label_suffix="_gt")
    with pytest.raises(DataError, match=r"nowhere.*not a directory"):
        make_reader("acdc", tmp_path / "nowhere")


def test_singleton_axes_from_converters_are_dropped(tmp_path) -> None:
    labels = heart_labels()
    write_nifti(tmp_path / "cine.nii.gz", heart_image(labels)[..., None], (*SPACING, FRAME_S, 1.0))
    write_nifti(tmp_path / "cine_gt.nii.gz", labels[..., None], (*SPACING, FRAME_S, 1.0))
    subject = make_reader("nifti_folder", tmp_path).read("cine")
    assert subject.shape == SHAPE and subject.labels.shape == SHAPE
    assert subject.frame_duration_ms == pytest.approx(30.0)


def test_folder_label_map_dict_and_bad_map(tmp_path) -> None:
    write_folder_subject(tmp_path, "cine", acdc_order=True)
    subject = make_reader("nifti_folder", tmp_path, label_map={"1": 3, "2": 2, "3": 1}).read("cine")
    assert subject.labels[(*LV_VOXEL, 0)] == LV_CAVITY
    with pytest.raises(ValueError, match="label_map values must be internal labels"):
        make_reader("nifti_folder", tmp_path, label_map={1: 5})
    with pytest.raises(ValueError, match="label_map must be one of"):
        make_reader("nifti_folder", tmp_path, label_map="mnms2")
