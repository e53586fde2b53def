"""precision.py: bf16-mixed-if-fast resolves by the hardware; every other precision passes through."""

from __future__ import annotations

import pytest
import torch

from calid_lightning import precision
from calid_lightning.precision import IF_FAST, bf16_is_fast, resolve_precision


@pytest.mark.parametrize("amx", [True, False])
def test_cpu_bf16_is_fast_only_with_amx_tiles(monkeypatch: pytest.MonkeyPatch, amx: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    assert bf16_is_fast() is amx
    assert resolve_precision(IF_FAST) == ("bf16-mixed" if amx else "32-true")


@pytest.mark.parametrize("native", [True, False])
def test_cuda_decides_by_its_own_bf16_support(monkeypatch: pytest.MonkeyPatch, native: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: native)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: not native)  # the CPU does not count
    assert bf16_is_fast() is native


@pytest.mark.parametrize("value", ["32-true", "bf16-mixed", "16-mixed"])
def test_other_precisions_pass_through(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setattr(precision, "bf16_is_fast", lambda: pytest.fail("not asked"))
    assert resolve_precision(value) == value
