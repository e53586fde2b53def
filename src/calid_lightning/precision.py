"""Which training precision is fast on this machine: bf16-mixed only where the hardware runs bf16 natively.

bf16-mixed trains the latent stages to the same quality as fp32 (docs/ablations.md, section 12), but whether
it is faster depends on the hardware: on a CPU with AMX tiles (Intel Sapphire Rapids and later) it gave
1.5-1.7x the samples/s; on an AVX-512 CPU without AMX (it has ``avx512_bf16``, but no bf16 matrix unit) the
same models ran at 0.82x in bf16-mixed, since autocast adds casts that the fp32 kernels do not pay for. On
CUDA, bf16 is native where ``torch.cuda.is_bf16_supported()`` says so (Ampere and later).
"""

from __future__ import annotations

import torch

IF_FAST = "bf16-mixed-if-fast"
"""The precision value that resolves to ``bf16-mixed`` where :func:`bf16_is_fast`, else ``32-true``."""


def bf16_is_fast() -> bool:
    """True on a CUDA device with native bf16 or a CPU with AMX tiles (where Lightning would train)."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    return bool(torch.cpu._is_amx_tile_supported())


def resolve_precision(precision: str) -> str:
    """``precision`` itself, or for :data:`IF_FAST` the precision that is fast here."""
    if precision != IF_FAST:
        return precision
    return "bf16-mixed" if bf16_is_fast() else "32-true"
