"""One entry point from a data config to a reader: ``make_reader(layout, root, **options)``.

Readers are lazy: ``list_subjects`` only looks at names, ``read`` loads one subject. :func:`read_all` and
:func:`iter_subjects` load many, either failing on the first bad subject or, when lenient, logging a warning
that names the file and the problem and skipping it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from calid_lightning.data.readers.acdc import AcdcReader
from calid_lightning.data.readers.folder import NiftiFolderReader
from calid_lightning.data.readers.mnms import MnmsReader
from calid_lightning.data.readers.ukbb import UkbbReader
from calid_lightning.data.subject import CardiacSubject, DataError

log = logging.getLogger(__name__)

LAYOUTS = ("acdc", "phantom", "mnms", "ukbb", "nifti_folder")


@runtime_checkable
class SubjectReader(Protocol):
    """What every reader offers: cheap sorted ids, and one subject loaded on demand."""

    root: Path
    lenient: bool

    def list_subjects(self) -> list[str]: ...

    def read(self, subject_id: str) -> CardiacSubject: ...


def make_reader(layout: str, root: str | Path, **options: Any) -> SubjectReader:
    """The reader for ``layout`` (one of :data:`LAYOUTS`) over ``root``.

    Options: ``lenient`` (all); mnms ``info_csv``, ``include_unlabeled``; nifti_folder ``label_suffix``,
    ``label_map``. "phantom" is the ACDC reader (the phantom writes ACDC layout plus dense truth).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(root, f"data root for layout {layout!r} is not a directory")
    factories: dict[str, Any] = {
        "acdc": lambda **kw: AcdcReader(root, dataset="acdc", **kw),
        "phantom": lambda **kw: AcdcReader(root, dataset="phantom", **kw),
        "mnms": lambda **kw: MnmsReader(root, **kw),
        "ukbb": lambda **kw: UkbbReader(root, **kw),
        "nifti_folder": lambda **kw: NiftiFolderReader(root, **kw),
    }
    if layout not in factories:
        raise ValueError(f"unknown data layout {layout!r}; expected one of {list(LAYOUTS)}")
    try:
        return factories[layout](**options)
    except TypeError as exc:
        raise ValueError(f"invalid options {sorted(options)} for layout {layout!r}: {exc}") from exc


def iter_subjects(
    reader: SubjectReader, lenient: bool | None = None, subject_ids: list[str] | None = None
) -> Iterator[CardiacSubject]:
    """Yield subjects one at a time; ``lenient`` (default: the reader's setting) logs and skips bad ones."""
    skip = reader.lenient if lenient is None else lenient
    for subject_id in reader.list_subjects() if subject_ids is None else subject_ids:
        try:
            yield reader.read(subject_id)
        except DataError as exc:
            if not skip:
                raise
            log.warning("skipping subject %s: %s", subject_id, exc)


def read_all(
    reader: SubjectReader, lenient: bool | None = None, subject_ids: list[str] | None = None
) -> list[CardiacSubject]:
    """Load every subject (or ``subject_ids``); see :func:`iter_subjects` for ``lenient``."""
    return list(iter_subjects(reader, lenient, subject_ids))
