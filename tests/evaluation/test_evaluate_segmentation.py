"""Downstream segmentation inside held-out evaluation: Dice / HD95 of segmented reconstructions, LV volumes of
the reconstructed stack, the ``truth`` ceiling, and ``calid evaluate --segmenter``."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from test_evaluate import PHANTOM, evaluate, read_csv

from calid_lightning.data.datamodule import CardiacDataModule
from calid_lightning.data.preprocess import PreparedSubject
from calid_lightning.data.sampling import stable_int
from calid_lightning.data.subject import LV_CAVITY, MYOCARDIUM, RV_CAVITY
from calid_lightning.evaluation.evaluate_cli import SUBJECT_FIELDS
from calid_lightning.evaluation.heldout import (
    RECORD_FIELDS,
    SLICE_SEGMENTATION_FIELDS,
    SUBJECT_SEGMENTATION_FIELDS,
    evaluate_run,
    shift_kept_slices,
)
from calid_lightning.evaluation.records import subjects_path
from calid_lightning.evaluation.segmentation import stack_volume_errors
from calid_lightning.evaluation.table import summary_table
from calid_lightning.inference.methods import METHODS, TrueSlices, build_method
from calid_lightning.models.segmenter import SegmenterModule
from checkpoints import save_checkpoint

INTENSITY = np.array([0.1, 0.9, 0.4, 0.65], np.float32)  # background, LV, myocardium, RV
SPACING = (1.5, 1.25, 2.5)


class IntensitySegmenter:
    """Labels each pixel by the nearest class intensity of :data:`INTENSITY` (exact on the true images)."""

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        assert images.ndim == 4 and images.shape[1] == 1 and images.min() >= 0 and images.max() <= 1
        distance = (images[:, 0, None] - torch.from_numpy(INTENSITY)[None, :, None, None]).abs()
        return distance.argmin(1)


class Blank:
    """An "upsampler" whose every slice is background: the segmenter finds nothing in it."""

    def at(
        self, stack: torch.Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None
    ) -> torch.Tensor:
        return torch.full((len(positions), *stack.shape[1:]), float(INTENSITY[0]))


def heart_subject(dense: bool = True, labelled: tuple[int, ...] = (0, 1, 2)) -> PreparedSubject:
    """9 slices, 3 frames (ED 0, ES 2): an LV disc that shrinks to the apex and in systole, a myocardial
    ring, an RV block on mid slices; images are the labels' intensities (so the truth segments exactly)."""
    z, t, size = 9, 3, 24
    ys, xs = np.indices((size, size))
    labels = np.zeros((z, t, size, size), np.uint8)
    for k in range(z):
        for f, squeeze in enumerate((1.0, 0.85, 0.7)):
            radius = (2 + 5 * k / (z - 1)) * squeeze
            distance = np.hypot(ys - 12, xs - 10)
            labels[k, f][distance <= radius + 2] = MYOCARDIUM
            labels[k, f][distance <= radius] = LV_CAVITY
            if 2 <= k <= 6:
                labels[k, f, 6:18, 19:22] = RV_CAVITY
    image = INTENSITY[labels]
    return PreparedSubject("heart", image, SPACING, (0, 0), 0, 2, dense, labels, labelled)


KEPT, HELD = [0, 4, 8], [1, 2, 3, 5, 6, 7]


def test_stack_volume_errors_by_counting() -> None:
    truth = np.zeros((6, 2, 5, 5), np.uint8)  # (Z, T, H, W); slices 1..4 are the reconstructed range
    truth[:, 0, :2, :5] = LV_CAVITY  # ED: 10 voxels a slice
    truth[:, 1, :2, :2] = LV_CAVITY  # ES: 4 voxels a slice
    kept, heldout = [1, 4], [3, 2]  # any order: slices are placed by index
    kept_pred = truth[kept].copy()
    held_pred = truth[heldout].copy()
    held_pred[0, 0, :2, :5] = MYOCARDIUM  # slice 3 at ED: the LV is missed (-10 voxels)
    held_pred[1, 1, 2, :3] = LV_CAVITY  # slice 2 at ES: 3 voxels too many
    spacing = (2.0, 1.5, 5.0)  # 15 mm^3 = 0.015 mL a voxel
    errors = stack_volume_errors(kept_pred, held_pred, kept, heldout, truth, spacing, ed=0, es=1)
    # the truth is cut to slices 1..4: slices 0 and 5 (LV too) must not count
    assert errors["true_edv_ml"] == pytest.approx(4 * 10 * 0.015)
    assert errors["true_esv_ml"] == pytest.approx(4 * 4 * 0.015)
    assert errors["edv_error_ml"] == pytest.approx(-10 * 0.015)
    assert errors["esv_error_ml"] == pytest.approx(3 * 0.015)
    true_ef, pred_ef = 100 * (40 - 16) / 40, 100 * (30 - 19) / 30
    assert errors["ef_error"] == pytest.approx(pred_ef - true_ef)
    assert errors["abs_ef_error"] == pytest.approx(abs(pred_ef - true_ef)) and errors["ef_error"] < 0

    torch_errors = stack_volume_errors(
        torch.from_numpy(kept_pred), torch.from_numpy(held_pred), kept, heldout, truth, spacing, 0, 1
    )
    assert torch_errors == pytest.approx(errors)
    with pytest.raises(ValueError, match=r"must fill 1\.\.4 exactly once"):
        stack_volume_errors(kept_pred, held_pred[:1], kept, [2], truth, spacing, 0, 1)
    with pytest.raises(ValueError, match="labels for 2 kept / 2 held-out slices, but 2 / 1"):
        stack_volume_errors(kept_pred, held_pred, kept, [2], truth, spacing, 0, 1)
    with pytest.raises(ValueError, match="labels for 1 kept / 2 held-out slices, but 2 / 2"):
        stack_volume_errors(kept_pred[:1], held_pred, kept, heldout, truth, spacing, 0, 1)


def test_truth_with_an_exact_segmenter_is_perfect() -> None:
    prepared = heart_subject()
    run = evaluate_run(
        "truth", build_method("truth"), prepared, KEPT, HELD, [0, 2], segmenter=IntensitySegmenter()
    )
    assert run.seconds == 0.0 and len(run.records) == len(HELD) * 2
    assert all(tuple(r) == (*RECORD_FIELDS, *SLICE_SEGMENTATION_FIELDS) for r in run.records)
    assert all(math.isnan(r["psnr"]) and math.isnan(r["ssim_heart"]) for r in run.records)
    for record in run.records:
        present = {c for c in ("lv", "myo", "rv") if not math.isnan(record[f"dice_{c}"])}
        assert {"lv", "myo"} <= present and ("rv" in present) == (2 <= record["z"] <= 6)
        assert {c for c in ("lv", "myo", "rv") if record[f"present_{c}"] == 1.0} == present
        assert all(record[f"dice_{c}"] == pytest.approx(1.0) and record[f"hd95_{c}"] == 0 for c in present)
    assert set(run.summary) == set(SUBJECT_SEGMENTATION_FIELDS)
    assert run.summary["dice_mean"] == pytest.approx(1.0) and run.summary["hd95_mean"] == 0.0
    for key in ("edv_error_ml", "esv_error_ml", "ef_error", "abs_ef_error"):
        assert run.summary[key] == pytest.approx(0.0, abs=1e-9), key
    with pytest.raises(TypeError, match="true held-out slices"):
        TrueSlices().at(torch.zeros(2, 1, 1, 24, 24), [0.5])


class RecordingSegmenter(IntensitySegmenter):
    """The exact segmenter, keeping every batch of images it is given."""

    def __init__(self) -> None:
        self.calls: list[torch.Tensor] = []

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(images.clone())
        return super().predict(images)


def test_volumes_segment_the_acquired_slices_the_method_saw() -> None:
    """The dense stack for EF is acquired + generated slices: under breath-hold offsets its acquired slices
    are the misregistered ones the method was given, not the registered truth."""
    prepared = heart_subject()
    kept_ed_es = torch.from_numpy(prepared.image[KEPT][:, [0, 2]]).unsqueeze(2)
    for shift_mm in (0.0, 3.0):
        seen = RecordingSegmenter()
        truth = build_method("truth")
        evaluate_run("truth", truth, prepared, KEPT, HELD, [0, 2], segmenter=seen, input_shift_mm=shift_mm)
        seed = stable_int("input-shift", 0, prepared.subject_id)
        acquired = shift_kept_slices(kept_ed_es, shift_mm, prepared.spacing, seed)
        assert torch.equal(seen.calls[-1], acquired.reshape(-1, 1, 24, 24)), shift_mm
    assert not torch.equal(acquired, kept_ed_es), "the 3 mm offsets moved the acquired slices"


def test_a_method_that_finds_nothing_scores_zero_and_loses_the_heldout_volume() -> None:
    prepared = heart_subject()
    run = evaluate_run("blank", Blank(), prepared, KEPT, HELD, [0, 2], segmenter=IntensitySegmenter())
    assert all(np.isfinite(r["psnr"]) for r in run.records)
    assert run.summary["dice_lv"] == 0.0 and run.summary["dice_mean"] == 0.0
    diagonal = math.hypot(24 * SPACING[0], 24 * SPACING[1])
    assert run.summary["hd95_rv"] == pytest.approx(diagonal), "a missed class scores the slice diagonal"
    voxel_ml = math.prod(SPACING) / 1000
    labels = prepared.labels
    # kept slices are segmented exactly, held-out ones not at all: the error is minus their LV volume
    assert run.summary["edv_error_ml"] == pytest.approx(-(labels[HELD, 0] == LV_CAVITY).sum() * voxel_ml)
    assert run.summary["esv_error_ml"] == pytest.approx(-(labels[HELD, 2] == LV_CAVITY).sum() * voxel_ml)
    assert run.summary["abs_ef_error"] == pytest.approx(abs(run.summary["ef_error"]))


class TruthWithBlob:
    """The true held-out slices of frames ED and ES, with a 12-voxel RV-intensity blob in a corner of those
    whose truth has no RV (z 1 and 7): a false positive on slices the per-slice Dice mean leaves out."""

    def __init__(self, prepared: PreparedSubject) -> None:
        images = prepared.image[HELD][:, [0, 2]].copy()
        for i, z in enumerate(HELD):
            if not (prepared.labels[z] == RV_CAVITY).any():
                images[i, :, :3, :4] = INTENSITY[RV_CAVITY]
        self.images = torch.from_numpy(images).unsqueeze(2)

    def at(
        self, stack: torch.Tensor, positions: Sequence[float], slice_spacing_mm: float | None = None
    ) -> torch.Tensor:
        return self.images


def test_volume_dice_counts_the_false_positive_the_slice_mean_leaves_out() -> None:
    prepared = heart_subject()
    exact = evaluate_run(
        "truth", build_method("truth"), prepared, KEPT, HELD, [0, 2], segmenter=IntensitySegmenter()
    )
    assert [exact.summary[f"dice3d_{c}"] for c in ("lv", "myo", "rv")] == pytest.approx([1.0, 1.0, 1.0])

    run = evaluate_run(
        "blob", TruthWithBlob(prepared), prepared, KEPT, HELD, [0, 2], segmenter=IntensitySegmenter()
    )
    assert run.summary["dice_rv"] == pytest.approx(1.0), "the per-slice mean skips the slices without RV"
    true_rv = (prepared.labels[HELD, 0] == RV_CAVITY).sum()  # 4 slices x 36 voxels, the same in both frames
    assert true_rv == 144
    assert run.summary["dice3d_rv"] == pytest.approx(2 * true_rv / (2 * true_rv + 2 * 12))
    assert run.summary["dice3d_lv"] == pytest.approx(1.0) and run.summary["dice3d_myo"] == pytest.approx(1.0)

    blank = evaluate_run("blank", Blank(), prepared, KEPT, HELD, [0, 2], segmenter=IntensitySegmenter())
    assert [blank.summary[f"dice3d_{c}"] for c in ("lv", "myo", "rv")] == [0.0, 0.0, 0.0]


def test_unlabelled_frames_and_missing_ed_es_give_nan() -> None:
    prepared = heart_subject(dense=False, labelled=(0, 2))  # an ACDC-like stack: ED and ES labelled only
    run = evaluate_run(
        "linear", build_method("linear"), prepared, KEPT, HELD, [0, 1, 2], segmenter=IntensitySegmenter()
    )
    frame1 = [r for r in run.records if r["frame"] == 1]
    assert frame1 and all(math.isnan(r[k]) for r in frame1 for k in SLICE_SEGMENTATION_FIELDS)
    assert all(0 <= r["dice_lv"] <= 1 for r in run.records if r["frame"] != 1)
    assert math.isfinite(run.summary["edv_error_ml"]), "ED and ES are evaluated and labelled"

    only_ed = evaluate_run(
        "linear", build_method("linear"), prepared, KEPT, HELD, [0, 1], segmenter=IntensitySegmenter()
    )
    assert math.isfinite(only_ed.summary["dice_lv"])
    assert all(
        math.isnan(only_ed.summary[k]) for k in ("edv_error_ml", "esv_error_ml", "ef_error", "abs_ef_error")
    )


def test_without_segmenter_records_keep_their_fields() -> None:
    run = evaluate_run("linear", build_method("linear"), heart_subject(), KEPT, HELD, [0])
    records, seconds = run.records, run.seconds
    assert all(tuple(r) == RECORD_FIELDS for r in records) and seconds >= 0
    assert "truth" in METHODS


@pytest.fixture(scope="module")
def phantom_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("phantom_seg") / "data"


@pytest.fixture(scope="module")
def segmenter_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An untrained tiny segmenter saved as a checkpoint."""
    torch.manual_seed(0)
    model = SegmenterModule(channels=(4, 8), strides=(2,), num_res_units=0)
    return save_checkpoint(model, tmp_path_factory.mktemp("seg") / "segmenter.ckpt")


def test_cli_segmenter_columns(
    phantom_root: Path, segmenter_checkpoint: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "seg.csv"
    args = ["--methods", "truth,linear", "--segmenter", str(segmenter_checkpoint), "--no-warmup"]
    assert evaluate(phantom_root, out, *args) == 0
    printed = capsys.readouterr().out
    fields, rows = read_csv(out)
    assert fields == [*RECORD_FIELDS, *SLICE_SEGMENTATION_FIELDS]
    assert {r["method"] for r in rows} == {"truth", "linear"}
    for row in rows:
        dice = [float(row[f"dice_{c}"]) for c in ("lv", "myo", "rv")]
        hd95 = [float(row[f"hd95_{c}"]) for c in ("lv", "myo", "rv")]
        assert all(math.isnan(d) or 0 <= d <= 1 for d in dice) and all(math.isnan(h) or h >= 0 for h in hd95)
        assert math.isnan(float(row["psnr"])) == (row["method"] == "truth")
    sub_fields, subjects = read_csv(subjects_path(out))
    assert sub_fields == [*SUBJECT_FIELDS, *SUBJECT_SEGMENTATION_FIELDS]
    by_method = {r["method"]: r for r in subjects}
    assert float(by_method["truth"]["seconds_per_volume"]) == 0.0
    for row in subjects:  # the subject's Dice / HD95: the mean over the slices whose truth holds the class
        mine = [r for r in rows if (r["subject"], r["method"]) == (row["subject"], row["method"])]
        for key in ("dice_myo", "hd95_lv"):
            held = [float(r[key]) for r in mine if r[f"present_{key.split('_')[1]}"] == "1.0"]
            assert float(row[key]) == pytest.approx(float(np.mean(held))), key
    for row in subjects:  # the phantom's test subject is evaluated at ED and ES: volumes exist
        assert all(math.isfinite(float(row[k])) for k in ("edv_error_ml", "esv_error_ml", "abs_ef_error"))
        assert float(row["abs_ef_error"]) == pytest.approx(abs(float(row["ef_error"])))
    assert "dice_lv" in printed and "abs_ef_error" in printed and "| truth | 1 | n/a |" in printed


def test_cli_truth_with_an_oracle_segmenter(
    phantom_root: Path, segmenter_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The segmenter replaced by an oracle (the true labels of the true images): Dice 1, no volume error."""
    datamodule = CardiacDataModule(root=str(phantom_root), crop_size=32, phantom=PHANTOM, gap_factor=4)
    datamodule.prepare_data()  # generates the phantom when this test runs alone
    (subject,) = datamodule.subjects("test")
    prepared = datamodule.prepared_subject(subject)
    lookup = {
        prepared.image[z, t].tobytes(): prepared.labels[z, t]
        for z in range(prepared.num_slices)
        for t in range(prepared.num_frames)
    }

    def oracle(self: SegmenterModule, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        return torch.from_numpy(np.stack([lookup[image[0].numpy().tobytes()] for image in images])).long()

    monkeypatch.setattr(SegmenterModule, "predict", oracle)
    out = tmp_path / "oracle.csv"
    args = ["--methods", "truth", "--segmenter", str(segmenter_checkpoint), "--no-warmup"]
    assert evaluate(phantom_root, out, *args) == 0
    _, rows = read_csv(out)
    dice = np.array([[float(r[f"dice_{c}"]) for c in ("lv", "myo", "rv")] for r in rows])
    assert np.isfinite(dice).any(axis=0).all(), "every class appears on some held-out slice"
    assert np.nanmin(dice) == 1.0
    ((row,),) = [read_csv(subjects_path(out))[1]]
    assert float(row["dice_mean"]) == 1.0 and float(row["hd95_mean"]) == 0.0
    for key in ("edv_error_ml", "esv_error_ml", "ef_error", "abs_ef_error"):
        assert float(row[key]) == 0.0, key


def test_summary_table_shows_segmentation_only_when_present() -> None:
    base = {
        "method": "linear",
        "psnr": 30.0,
        "ssim": 0.9,
        "psnr_heart": 28.0,
        "ssim_heart": 0.8,
        "hf_ratio": 1.0,
    }
    rows = [base | {"seconds_per_volume": 0.1}]
    assert "dice_lv" not in summary_table(rows, ["linear"])
    seg = dict.fromkeys(SUBJECT_SEGMENTATION_FIELDS, 0.5)
    table = summary_table([rows[0] | seg, rows[0] | seg | {"dice_lv": 0.7}], ["linear"])
    assert "dice_lv" in table.splitlines()[0] and "| 0.600 ± 0.141 |" in table


def test_cli_without_segmenter_skips_truth_and_leaves_the_columns_out(
    phantom_root: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "plain.csv"
    assert evaluate(phantom_root, out, "--methods", "truth,linear", "--frames", "0", "--no-warmup") == 0
    assert "skipping truth: they need --segmenter" in capsys.readouterr().err
    fields, rows = read_csv(out)
    assert fields == list(RECORD_FIELDS) and {r["method"] for r in rows} == {"linear"}
    assert read_csv(subjects_path(out))[0] == list(SUBJECT_FIELDS)
