"""One progress bar per upsampling run: generated slices (x frames) with an ETA, then decode and write.

The unit is one generated 2D image: a slice of a 3D stack, or one frame of a generated slice of a cine
(whether a spatial model makes it frame by frame or a 2D+T model makes the slice's whole cine at once).
Sampling advances the bar by the images of each interpolator call; each decode pass and each file written
is one more unit, so the bar reaches its total only when the last output file is in place, and the phase
("encoding", "sampling", "decoding", "writing") is in its description while a long step runs.
"""

from __future__ import annotations

import sys
from types import TracebackType

from tqdm.auto import tqdm


class UpsampleProgress:
    """Progress of ``samples`` generations of ``slices`` slices x ``frames`` frames, plus ``files`` writes.

    ``decode=False`` for methods without a decode pass (the whole-stack image baselines).
    """

    def __init__(
        self,
        slices: int,
        frames: int = 1,
        samples: int = 1,
        files: int = 0,
        decode: bool = True,
        enabled: bool = True,
    ) -> None:
        self.slices, self.frames, self.samples, self.files = slices, frames, samples, files
        self.total = self.engine_units(slices, frames, samples, decode) + files
        self.n = 0
        self._phase = ""
        label = f"{slices} slices" + (f" x {frames} frames" if frames > 1 else "")
        self._label = f"upsample {label}"
        self._bar = tqdm(
            total=self.total,
            desc=self._label,
            unit="frame" if frames > 1 else "slice",
            disable=not enabled,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    @staticmethod
    def engine_units(slices: int, frames: int, samples: int, decode: bool = True) -> int:
        """Units the engine reports: every generated image of every sample, plus one per decode pass."""
        if slices == 0:
            return 0
        return samples * (slices * frames + int(decode))

    def phase(self, name: str) -> None:
        """Show what runs now (e.g. "decoding") beside the counts."""
        if name != self._phase:
            self._phase = name
            self._bar.set_description_str(f"{self._label} ({name})")

    def advance(self, units: int = 1) -> None:
        """Count ``units`` more units as done."""
        self.n += units
        self._bar.update(units)

    def close(self) -> None:
        """End the bar (prints its final state)."""
        self._bar.close()

    def __enter__(self) -> UpsampleProgress:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
