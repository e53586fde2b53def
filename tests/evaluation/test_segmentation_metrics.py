"""Segmentation metrics against hand-computed values on tiny known masks, empty classes, LV volumes and EF."""

import math
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import binary_erosion
from scipy.spatial.distance import cdist, directed_hausdorff

from calid_lightning.evaluation.segmentation import (
    aggregate_segmentation,
    lv_volumes,
    segmentation_metrics,
    volume_dice,
    volume_errors,
)

SPACING = (1.5, 1.0)  # mm along H (rows) and W (columns): anisotropic, so the axis order matters


def squares(shift: tuple[int, int], label: int = 1, size: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """A 10 x 10 square of ``label`` (truth) and the same square moved by ``shift`` pixels (prediction)."""
    truth = np.zeros((1, size, size), np.int64)
    pred = np.zeros_like(truth)
    truth[0, 4:14, 5:15] = label
    pred[0, 4 + shift[0] : 14 + shift[0], 5 + shift[1] : 15 + shift[1]] = label
    return pred, truth


def scipy_hausdorff_mm(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float]) -> float:
    """Symmetric (100th percentile) Hausdorff distance in mm of two 2D masks, by scipy."""
    a = np.argwhere(pred) * np.asarray(spacing)
    b = np.argwhere(truth) * np.asarray(spacing)
    return max(directed_hausdorff(a, b)[0], directed_hausdorff(b, a)[0])


@pytest.mark.parametrize(
    ("shift", "hd_mm"),
    [((2, 0), 2 * 1.5), ((0, 2), 2 * 1.0), ((0, 3), 3 * 1.0)],
)
def test_offset_squares_dice_and_hd95_by_hand(shift, hd_mm):
    pred, truth = squares(shift)
    metrics = segmentation_metrics(pred, truth, SPACING)
    moved = max(shift)
    # overlap (10 - moved) x 10 of two 100-pixel squares
    assert metrics["dice_lv"][0] == pytest.approx(2 * (10 - moved) * 10 / 200, abs=1e-6)
    # a pure shift: the leading edge's boundary pixels (10 of 36) lie `moved` pixels from the other square's
    # edge along the shifted axis, no pixel lies farther, so HD95 = HD = the shift in mm
    assert metrics["hd95_lv"][0] == pytest.approx(hd_mm, abs=1e-5)
    assert metrics["hd95_lv"][0] == pytest.approx(scipy_hausdorff_mm(pred[0], truth[0], SPACING), abs=1e-5)
    assert metrics["present_lv"].tolist() == [True]


def test_hd95_is_the_95th_percentile_not_the_maximum():
    truth = np.zeros((1, 40, 40), np.int64)
    truth[0, 5:35, 5:35] = 2
    pred = truth.copy()
    pred[0, 18, 35:39] = 2  # a one-pixel spur of 4 pixels: few boundary points, far away
    metrics = segmentation_metrics(pred, truth, (1.0, 1.0))
    assert scipy_hausdorff_mm(pred[0], truth[0], (1.0, 1.0)) == pytest.approx(4.0)
    assert metrics["hd95_myo"][0] < 1.0, "the spur is under 5 % of the boundary and must not set HD95"
    assert metrics["dice_myo"][0] == pytest.approx(2 * 900 / (900 + 904), abs=1e-6)


def test_perfect_prediction_and_tensor_inputs():
    pred, truth = squares((0, 0), label=3)
    metrics = segmentation_metrics(torch.from_numpy(pred), torch.from_numpy(truth), SPACING)
    assert metrics["dice_rv"][0] == pytest.approx(1.0) and metrics["hd95_rv"][0] == 0.0


def test_empty_classes():
    truth = np.zeros((3, 20, 20), np.int64)
    pred = np.zeros_like(truth)
    truth[0, 2:8, 2:8] = 1  # slice 0: LV in truth, missed by the prediction
    pred[1, 2:8, 2:8] = 1  # slice 1: LV only in the prediction (false positive)
    truth[2, 2:8, 2:8] = 1  # slice 2: LV found exactly
    pred[2, 2:8, 2:8] = 1
    metrics = segmentation_metrics(pred, truth, SPACING)
    diagonal = math.hypot(20 * 1.5, 20 * 1.0)
    np.testing.assert_allclose(metrics["dice_lv"], [0.0, 0.0, 1.0])
    np.testing.assert_allclose(metrics["hd95_lv"], [diagonal, diagonal, 0.0])
    assert metrics["present_lv"].tolist() == [True, False, True]
    for key in ("dice_myo", "hd95_myo", "dice_rv", "hd95_rv"):
        assert np.isnan(metrics[key]).all(), f"{key}: absent in both must be NaN"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a class no slice holds is NaN by rule, not the mean of nothing
        summary = aggregate_segmentation(metrics)
    assert summary["dice_lv"] == pytest.approx(0.5), "the false-positive slice (no LV in truth) is ignored"
    assert summary["hd95_lv"] == pytest.approx(diagonal / 2)
    assert summary["slices_lv"] == 2 and summary["slices_rv"] == 0
    assert math.isnan(summary["dice_rv"]) and math.isnan(summary["hd95_myo"])
    assert summary["dice_mean"] == pytest.approx(0.5), "classes no truth slice holds are left out of the mean"


def test_aggregate_reads_presence_as_a_mask_from_zeros_and_ones():
    """``present_<c>`` read back from a CSV is 0/1, not bool: it must select slices, not index them."""
    per_slice = {f"{m}_{k}": np.array([0.2, 0.9, 0.6]) for m in ("dice", "hd95") for k in ("lv", "myo", "rv")}
    per_slice |= {f"present_{k}": [1, 0, 1] for k in ("lv", "myo", "rv")}
    summary = aggregate_segmentation(per_slice)
    assert summary["dice_lv"] == pytest.approx(0.4) and summary["slices_myo"] == 2


def test_aggregate_over_concatenated_slices():
    first = segmentation_metrics(*squares((2, 0)), SPACING)
    second = segmentation_metrics(*squares((0, 0)), SPACING)
    joined = {key: np.concatenate([first[key], second[key]]) for key in first}
    summary = aggregate_segmentation(joined)
    assert summary["dice_lv"] == pytest.approx((0.8 + 1.0) / 2, abs=1e-6)
    assert summary["hd95_lv"] == pytest.approx(1.5, abs=1e-5)


def test_bad_inputs_fail_clearly():
    pred, truth = squares((0, 0))
    with pytest.raises(ValueError, match="shapes differ"):
        segmentation_metrics(pred[:, :10], truth, SPACING)
    with pytest.raises(ValueError, match=r"^pred holds labels outside 0\.\.3: \[0, 5\]"):
        segmentation_metrics(pred * 5, truth, SPACING)
    with pytest.raises(ValueError, match=r"^truth holds labels outside 0\.\.3: \[0, 4\]"):
        segmentation_metrics(pred, truth * 4, SPACING)  # 4 = NUM_CLASSES: the first label past the range
    with pytest.raises(ValueError, match=r"^pred must be \(N, H, W\)"):
        segmentation_metrics(pred[0], truth, SPACING)
    with pytest.raises(ValueError, match=r"^truth must hold integer labels"):
        segmentation_metrics(pred, truth + 0.5, SPACING)
    with pytest.raises(ValueError, match=r"spacing must be \(dx, dy\)"):
        segmentation_metrics(pred, truth, (1.0, 1.0, 8.0))
    with pytest.raises(ValueError, match=r"spacing must be \(dx, dy\) in mm, both > 0"):
        segmentation_metrics(pred, truth, (0.0, 1.0))


def test_float_labels_holding_whole_numbers_score_as_integer_labels():
    """Label maps read from NIfTI are often float: 0.0 .. 3.0 must score exactly as 0 .. 3."""
    pred, truth = squares((2, 0), label=2)
    as_int = segmentation_metrics(pred, truth, SPACING)
    as_float = segmentation_metrics(pred.astype(np.float32), truth.astype(np.float64), SPACING)
    for key in ("dice_myo", "hd95_myo"):
        np.testing.assert_allclose(as_float[key], as_int[key])
    assert as_float["dice_myo"][0] == pytest.approx(0.8)


def test_lv_volumes_and_ejection_fraction_from_known_counts():
    labels = np.zeros((4, 3, 10, 10), np.uint8)  # (Z, T, H, W)
    labels[:, 0, :5, :6] = 1  # ED: 4 slices x 30 LV voxels = 120 voxels
    labels[:2, 2, :5, :5] = 1  # ES (frame 2): 2 x 25 = 50 voxels
    labels[:, 0, 6:, :] = 2  # myocardium and RV never count
    labels[:, 2, 6:, :] = 3
    spacing = (1.5, 2.0, 10.0)  # 30 mm^3 per voxel
    edv, esv, ef = lv_volumes(labels, spacing, ed=0, es=2)
    assert edv == pytest.approx(120 * 30 / 1000) and esv == pytest.approx(50 * 30 / 1000)
    assert ef == pytest.approx(100 * (120 - 50) / 120)
    assert math.isnan(lv_volumes(np.zeros_like(labels), spacing, 0, 2)[2])
    with pytest.raises(ValueError, match=r"es frame 3 is out of range 0\.\.2"):
        lv_volumes(labels, spacing, 0, 3)
    with pytest.raises(ValueError, match=r"^ed frame -1 is out of range"):
        lv_volumes(labels, spacing, -1, 2)
    with pytest.raises(ValueError, match=r"\(dx, dy, dz\) in mm, all > 0, got \(1\.5, 2\.0\)"):
        lv_volumes(labels, (1.5, 2.0), 0, 2)
    with pytest.raises(ValueError, match=r"all > 0, got \(1\.5, 0\.0, 10\.0\)"):
        lv_volumes(labels, (1.5, 0.0, 10.0), 0, 2)
    with pytest.raises(ValueError, match=r"\(Z, T, H, W\), got shape \(3, 10, 10\)"):
        lv_volumes(labels[0], spacing, 0, 2)
    fine = lv_volumes(labels, (0.5, 1.0, 1.0), 0, 2)  # sub-millimetre pixels are valid
    assert fine[0] == pytest.approx(120 * 0.5 / 1000)

    pred = labels.copy()
    pred[0, 0, :5, :6] = 0  # one ED slice missed: 30 voxels fewer
    errors = volume_errors(pred, labels, spacing, ed=0, es=2)
    assert errors["edv_error_ml"] == pytest.approx(-30 * 30 / 1000)
    assert errors["esv_error_ml"] == pytest.approx(0.0)
    assert errors["ef_error"] == pytest.approx(100 * 40 / 90 - 100 * 70 / 120)
    assert errors["true_edv_ml"] == pytest.approx(edv)
    expected = {
        "edv_ml": 90 * 30 / 1000,
        "esv_ml": esv,
        "ef_percent": 100 * 40 / 90,
        "true_esv_ml": esv,
        "true_ef_percent": ef,
    }
    for key, value in expected.items():
        assert errors[key] == pytest.approx(value), key


def reference_hd95_mm(pred: np.ndarray, truth: np.ndarray, spacing: tuple[float, float]) -> float:
    """HD95 by definition, without MONAI: boundary pixels (mask minus its 4-neighbour erosion), each
    boundary's distances (mm) to the other boundary, the 95th percentile of each direction, the larger one."""
    edges = [np.argwhere(m & ~binary_erosion(m)) * np.asarray(spacing) for m in (pred > 0, truth > 0)]
    distances = cdist(*edges)
    return max(np.percentile(distances.min(axis=1), 95), np.percentile(distances.min(axis=0), 95))


def test_hd95_matches_a_reference_on_curved_shapes_with_anisotropic_spacing():
    ys, xs = np.indices((48, 48))
    truth = (np.hypot(ys - 22, xs - 24) <= 11).astype(np.int64)[None]  # a disc
    pred = ((((ys - 25) / 8) ** 2 + ((xs - 22) / 13) ** 2) <= 1).astype(np.int64)[None]  # an offset ellipse
    pred[0, 10:13, 40:44] = 1  # plus a small false-positive blob: HD95 must stay below the maximum
    spacing = (1.8, 1.2)
    metrics = segmentation_metrics(pred, truth, spacing)
    expected = reference_hd95_mm(pred[0], truth[0], spacing)
    assert metrics["hd95_lv"][0] == pytest.approx(expected, rel=1e-5)
    assert expected < scipy_hausdorff_mm(pred[0], truth[0], spacing) - 1.0, "the test needs HD95 < HD"
    assert metrics["dice_lv"][0] == pytest.approx(2 * (pred & truth).sum() / (pred.sum() + truth.sum()))
    transposed = segmentation_metrics(pred.transpose(0, 2, 1), truth.transpose(0, 2, 1), spacing[::-1])
    assert transposed["hd95_lv"][0] == pytest.approx(expected, rel=1e-5), "spacing follows the axes"


def test_volume_dice_pools_voxels_and_counts_false_positives():
    truth = np.zeros((3, 20, 20), np.int64)
    pred = np.zeros_like(truth)
    truth[0, 2:8, 2:8] = 1  # slice 0: 36 LV voxels, missed
    pred[1, 2:8, 2:8] = 1  # slice 1: 36 false-positive LV voxels on a slice without LV
    truth[2, 5:15, 5:15] = 1  # slice 2: 100 LV voxels found exactly
    pred[2, 5:15, 5:15] = 1
    assert aggregate_segmentation(segmentation_metrics(pred, truth, SPACING))["dice_lv"] == pytest.approx(0.5)
    dice = volume_dice(pred, truth)
    assert dice["dice3d_lv"] == pytest.approx(2 * 100 / (136 + 136))
    assert math.isnan(dice["dice3d_myo"]) and math.isnan(dice["dice3d_rv"]), "absent in both stacks: NaN"
    pred[1] = 0  # without the false positive: only the missed slice costs
    assert volume_dice(torch.from_numpy(pred), truth)["dice3d_lv"] == pytest.approx(2 * 100 / (100 + 136))
    with pytest.raises(ValueError, match="shapes differ"):
        volume_dice(pred[:2], truth)
