"""Reading a checkpoint file safely: tensors and plain values only, one-line errors naming the file.

``torch.load`` of a text file raises ``KeyError``, of random bytes an ``UnpicklingError`` whose text advises
``weights_only=False`` - advice a user must not follow for a file of unknown origin. :func:`read_checkpoint`
turns every such failure into a :class:`~calid_lightning.errors.DataError` that says what the file
is (not a checkpoint, truncated, or holding arbitrary Python objects) without that advice.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

import torch

from calid_lightning.errors import DataError

ZIP_MAGIC = b"PK\x03\x04"
"""The first bytes of every checkpoint ``torch.save`` writes (a zip archive since PyTorch 1.6)."""


def read_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """``torch.load(path, weights_only=True)`` of a Lightning-style checkpoint dict, or a clean DataError."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "checkpoint file not found" if not path.exists() else "is not a file")
    if not os.access(path, os.R_OK):
        raise DataError(path, "checkpoint file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise DataError(path, "checkpoint file is empty (0 bytes)")
    with open(path, "rb") as handle:
        is_zip = handle.read(4) == ZIP_MAGIC
    try:
        checkpoint = torch.load(str(path), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch.load raises KeyError, UnpicklingError, RuntimeError, EOFError, ...
        if not is_zip:
            raise DataError(
                path, "not a PyTorch checkpoint (expected the zip archive that torch.save / Lightning write)"
            ) from None
        if "weights_only" in str(exc) or "Weights only" in str(exc):
            raise DataError(
                path,
                "holds Python objects other than tensors and plain values; not loaded, since loading them "
                "could run code (CaLID checkpoints hold only tensors and plain values)",
            ) from None
        problem = "corrupt checkpoint" if zipfile.is_zipfile(path) else "truncated checkpoint (cut-off zip)"
        raise DataError(path, f"{problem}; {type(exc).__name__} while reading it") from None
    if not isinstance(checkpoint, dict):
        raise DataError(path, f"holds a {type(checkpoint).__name__}, not a Lightning checkpoint dict")
    return checkpoint
