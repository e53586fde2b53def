"""The error a user can act on, at the bottom layer so that every module (helpers included) can raise it.

:class:`DataError` is re-exported by :mod:`calid_lightning.data.subject`, where most code imports it.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input a user can act on: the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")
