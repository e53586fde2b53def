"""Bad input from real life: each case is a DataError whose message names the file and the problem."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from calid_lightning.data.readers.nifti import load_image
from calid_lightning.data.readers.registry import make_reader
from calid_lightning.data.subject import DataError
from layouts import (
    SHAPE,
    SPACING,
    default_affine,
    heart_image,
    heart_labels,
    write_acdc_subject,
    write_folder_subject,
    write_mnms_csv,
    write_mnms_subject,
    write_nifti,
    write_ukbb_subject,
)


def read_folder(root, name: str = "bad"):
    return make_reader("nifti_folder", root).read(name)


def test_truncated_file(tmp_path) -> None:
    directory = write_acdc_subject(tmp_path, 1)
    path = directory / "patient001_4d.nii.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(
        DataError, match=r"patient001_4d\.nii\.gz: cannot read the voxel data, truncated or corrupt"
    ):
        make_reader("acdc", tmp_path).read("patient001")


@pytest.mark.parametrize("name", ["bad.nii.gz", "bad.nii"])
def test_non_nifti_file(tmp_path, name) -> None:
    content = b"patient,ED,ES\n" * 40
    (tmp_path / name).write_bytes(gzip.compress(content) if name.endswith(".gz") else content)
    with pytest.raises(DataError, match=rf"{name}: not a readable NIfTI file"):
        read_folder(tmp_path)


@pytest.mark.parametrize(("shape", "ndim"), [((12, 10), 2), ((12, 10, 4, 5, 2), 5)])
def test_2d_or_5d_image(tmp_path, shape, ndim) -> None:
    write_nifti(tmp_path / "bad.nii.gz", np.ones(shape, dtype=np.float32))
    with pytest.raises(DataError, match=rf"bad\.nii\.gz: expected a 3D or 4D image .* got {ndim}D"):
        read_folder(tmp_path)


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nan_or_inf_voxels(tmp_path, value) -> None:
    image = heart_image(heart_labels())
    image[3, 4, 1, 2] = value
    write_nifti(tmp_path / "bad.nii.gz", image, (*SPACING, 0.03))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: 1 NaN/Inf voxels"):
        read_folder(tmp_path)


def test_all_zero_volume(tmp_path) -> None:
    write_nifti(tmp_path / "bad.nii.gz", np.zeros(SHAPE, dtype=np.float32), (*SPACING, 0.03))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: all voxels are zero"):
        read_folder(tmp_path)


def test_fewer_than_two_slices(tmp_path) -> None:
    write_folder_subject(tmp_path, "bad", shape=(12, 10, 1, 5), labels=False)
    with pytest.raises(DataError, match=r"bad\.nii\.gz: only 1 slice\(s\) along Z"):
        read_folder(tmp_path)


def test_label_shape_differs_from_image(tmp_path) -> None:
    write_folder_subject(tmp_path, "bad", labels=False)
    write_nifti(tmp_path / "bad_gt.nii.gz", heart_labels((12, 10, 3, 5)), (*SPACING, 0.03))
    with pytest.raises(
        DataError, match=r"bad_gt\.nii\.gz: label shape \(12, 10, 3, 5\) differs .* \(12, 10, 4, 5\)"
    ):
        read_folder(tmp_path)


def test_unknown_label_values(tmp_path) -> None:
    directory = write_acdc_subject(tmp_path, 1, ed=1, es=3)
    labels = heart_labels((*SHAPE[:3], 1))[..., 0]
    labels[0, 0, 0], labels[0, 1, 0] = 4, 7
    write_nifti(directory / "patient001_frame03_gt.nii.gz", labels, SPACING)
    with pytest.raises(DataError, match=r"patient001_frame03_gt\.nii\.gz: unknown label values \[4, 7\]"):
        make_reader("acdc", tmp_path).read("patient001")


def test_fractional_label_values(tmp_path) -> None:
    write_folder_subject(tmp_path, "bad", labels=False)
    write_nifti(tmp_path / "bad_gt.nii.gz", heart_labels().astype(np.float32) * 0.5, (*SPACING, 0.03))
    with pytest.raises(DataError, match=r"bad_gt\.nii\.gz: labels must be integers"):
        read_folder(tmp_path)


def test_missing_info_cfg(tmp_path) -> None:
    directory = write_acdc_subject(tmp_path, 1)
    (directory / "Info.cfg").unlink()
    with pytest.raises(DataError, match=r"patient001/Info\.cfg: Info\.cfg not found"):
        make_reader("acdc", tmp_path).read("patient001")


def test_malformed_info_cfg_line(tmp_path) -> None:
    directory = write_acdc_subject(tmp_path, 1)
    (directory / "Info.cfg").write_text("ED: 1\nES 3\n")
    with pytest.raises(DataError, match=r"Info\.cfg: line 2 is not 'key: value'"):
        make_reader("acdc", tmp_path).read("patient001")


def test_info_cfg_missing_ed(tmp_path) -> None:
    write_acdc_subject(tmp_path, 1, info={"ED": None})
    with pytest.raises(DataError, match=r"Info\.cfg: missing key 'ED'"):
        make_reader("acdc", tmp_path).read("patient001")


def test_info_cfg_non_integer_es(tmp_path) -> None:
    write_acdc_subject(tmp_path, 1, info={"ES": "three"})
    with pytest.raises(DataError, match=r"Info\.cfg: ES must be an integer, got 'three'"):
        make_reader("acdc", tmp_path).read("patient001")


def test_acdc_es_out_of_range(tmp_path) -> None:
    write_acdc_subject(tmp_path, 1, es=40)
    with pytest.raises(DataError, match=r"Info\.cfg: ES 40 out of range 1\.\.5 \(1-based"):
        make_reader("acdc", tmp_path).read("patient001")


def test_mnms_ed_out_of_range(tmp_path) -> None:
    write_mnms_subject(tmp_path, "A1B2C3")
    write_mnms_csv(tmp_path / "info.csv", {"A1B2C3": (5, 2)})
    with pytest.raises(DataError, match=r"info\.csv: ED 5 out of range 0\.\.4 \(0-based"):
        make_reader("mnms", tmp_path).read("A1B2C3")


def test_mnms_missing_csv_row(tmp_path) -> None:
    write_mnms_subject(tmp_path, "A1B2C3")
    write_mnms_csv(tmp_path / "info.csv", {"ZZZZZZ": (0, 2)})
    with pytest.raises(DataError, match=r"info\.csv: no row for External code 'A1B2C3'"):
        make_reader("mnms", tmp_path).read("A1B2C3")


def test_mnms_non_integer_csv_value(tmp_path) -> None:
    write_mnms_subject(tmp_path, "A1B2C3")
    write_mnms_csv(tmp_path / "info.csv", {"A1B2C3": (0, "2.5")})
    with pytest.raises(DataError, match=r"info\.csv: row 'A1B2C3': ES must be an integer, got '2\.5'"):
        make_reader("mnms", tmp_path).read("A1B2C3")


def test_mnms_csv_missing_column(tmp_path) -> None:
    write_mnms_subject(tmp_path, "A1B2C3")
    (tmp_path / "info.csv").write_text("External code,VendorName,ED\nA1B2C3,Siemens,0\n")
    with pytest.raises(DataError, match=r"info\.csv: missing column\(s\) \['ES'\]"):
        make_reader("mnms", tmp_path, info_csv=tmp_path / "info.csv").read("A1B2C3")


def test_mnms_without_csv(tmp_path) -> None:
    write_mnms_subject(tmp_path / "data", "A1B2C3")
    with pytest.raises(DataError, match=r"data: no M&Ms information CSV"):
        make_reader("mnms", tmp_path / "data").read("A1B2C3")


def test_ukbb_es_segmentation_without_time_reference(tmp_path) -> None:
    write_ukbb_subject(tmp_path, "1000001", seg="ed_es", es_image=False)
    with pytest.raises(DataError, match=r"seg_sa_ES\.nii\.gz: cannot place it in time"):
        make_reader("ukbb", tmp_path).read("1000001")


def test_missing_cine(tmp_path) -> None:
    directory = write_acdc_subject(tmp_path, 1)
    (directory / "patient001_4d.nii.gz").unlink()
    with pytest.raises(DataError, match=r"patient001_4d\.nii\.gz: file not found"):
        make_reader("acdc", tmp_path).read("patient001")


def test_info_cfg_nbframe_disagrees_with_cine(tmp_path) -> None:
    write_acdc_subject(tmp_path, 1, info={"NbFrame": 30})
    with pytest.raises(DataError, match=r"Info\.cfg: NbFrame 30 differs from the 5 frames of patient001_4d"):
        make_reader("acdc", tmp_path).read("patient001")


def test_zero_voxel_spacing(tmp_path) -> None:
    image = heart_image(heart_labels())
    write_nifti(tmp_path / "bad.nii.gz", image, (1.5, 1.5, 0.0, 0.03), affine=default_affine(SPACING))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: header pixdim \(voxel spacing\) must be positive"):
        read_folder(tmp_path)


def test_float64_beyond_float32_range(tmp_path) -> None:
    image = heart_image(heart_labels()).astype(np.float64)
    image[3, 4, 1, 2] = 1e300
    write_nifti(tmp_path / "bad.nii.gz", image, (*SPACING, 0.03))
    with pytest.raises(
        DataError, match=r"bad\.nii\.gz: values out of float32 range \(largest magnitude 1e\+300"
    ):
        read_folder(tmp_path)


def test_constant_intensity_refused_by_training_readers(tmp_path) -> None:
    write_nifti(tmp_path / "bad.nii.gz", np.full(SHAPE, 7.0, dtype=np.float32), (*SPACING, 0.03))
    with pytest.raises(DataError, match=r"bad\.nii\.gz: constant intensity 7\.0"):
        read_folder(tmp_path)


def test_nifti_pair_is_read_as_nifti(tmp_path) -> None:
    image = heart_image(heart_labels())
    nib.save(nib.Nifti1Pair(image, default_affine(SPACING)), str(tmp_path / "pair.hdr"))
    for name in ("pair.hdr", "pair.img"):
        volume = load_image(tmp_path / name)
        assert np.array_equal(volume.array, image) and volume.spacing == pytest.approx(SPACING)


def test_analyze_header_is_refused(tmp_path) -> None:
    nib.save(nib.AnalyzeImage(heart_image(heart_labels())[..., 0], np.eye(4)), str(tmp_path / "old.hdr"))
    with pytest.raises(DataError, match=r"old\.hdr: an Analyze 7\.5 header, not NIfTI"):
        load_image(tmp_path / "old.hdr")


@pytest.mark.parametrize(("name", "kind"), [("scan.mnc", "MINC"), ("brain.mgz", "MGH"), ("brain.mgh", "MGH")])
def test_other_formats_are_one_line_unsupported(tmp_path, name, kind) -> None:
    path = tmp_path / name
    if name.startswith("brain"):
        nib.save(nib.MGHImage(heart_image(heart_labels())[..., 0], np.eye(4)), str(path))
    else:
        path.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 512)  # a MINC2 (HDF5) signature
    with pytest.raises(DataError, match=rf"{name}: unsupported format {kind}.*expected NIfTI") as info:
        load_image(path)
    assert "\n" not in str(info.value)
