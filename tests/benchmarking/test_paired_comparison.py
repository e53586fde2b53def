"""benchmarks/paired_comparison.py: per-file and pooled paired tables, subjects kept apart by file."""

from pathlib import Path

import pytest

from benchmark_scripts import load_benchmark

bench = load_benchmark("paired_comparison")


def _write(path: Path, scores: dict[str, dict[str, float]]) -> Path:
    """subject -> method -> PSNR, as a per-subject CSV of calid evaluate (factor 4)."""
    lines = ["subject,method,factor,psnr"]
    lines += [f"{s},{m},4,{v}" for s, methods in scores.items() for m, v in methods.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_pooling_keeps_same_named_subjects_of_two_files_apart(tmp_path: Path) -> None:
    """Both files hold a "p0": each pairs with its own file's linear. Differences +2 (a), 0 and +1 (b):
    pooled mean +1, sd 1, 95 % half-width t(0.975, 2 df) / sqrt(3) = 4.3027 / 1.732 = 2.48; 2 of 3 better."""
    a = _write(tmp_path / "a_subjects.csv", {"p0": {"calid": 22.0, "linear": 20.0}})
    b = _write(
        tmp_path / "b_subjects.csv",
        {"p0": {"calid": 21.0, "linear": 21.0}, "p1": {"calid": 23.0, "linear": 22.0}},
    )
    text = bench.report([a, b], pool=True)
    sections = text.split("## ")
    one_file = next(s for s in sections if s.startswith(str(a)))
    assert "| CaLID, one sample | +2.00 (1/1) |" in one_file, "one subject: no interval"
    pooled = next(s for s in sections if s.startswith("Pooled"))
    assert pooled.startswith("Pooled: 3 subjects of 2 files")
    assert "| CaLID, one sample | +1.00 ± 2.48 (2/3) |" in pooled
    assert "Pooled" not in bench.report([a, b], pool=False)


def test_bad_inputs_stop_with_one_line_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing_subjects.csv"
    with pytest.raises(SystemExit, match=f"{missing}: no such file"):
        bench.report([missing], pool=False)
    no_linear = _write(tmp_path / "x_subjects.csv", {"p0": {"calid": 22.0}})
    with pytest.raises(SystemExit, match=f"{no_linear}: no 'linear' rows"):
        bench.report([no_linear], pool=False)
