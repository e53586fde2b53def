"""The embedded procedural 3D+t cardiac phantom, simulated as an MR acquisition (see ``docs/phantom.md``).

Modules: :mod:`.config` (settings and the subject record), :mod:`.anatomy` (heart shape and per-frame render),
:mod:`.motion` (volume curve and LV geometry), :mod:`.context` (the body around the heart),
:mod:`.acquisition` (k-space, slice profile, noise), :mod:`.generate` (one subject, a data set),
:mod:`.io` (the ACDC-layout writer and its folder manifest) and :mod:`.cli` (``calid phantom``).
"""

from calid_lightning.data.phantom.config import PATHOLOGIES, PhantomConfig, PhantomSubject
from calid_lightning.data.phantom.generate import (
    GENERATOR_VERSION,
    generate_subject,
    subject_seed,
    write_dataset,
)
from calid_lightning.data.phantom.io import write_subject

__all__ = [
    "GENERATOR_VERSION",
    "PATHOLOGIES",
    "PhantomConfig",
    "PhantomSubject",
    "generate_subject",
    "subject_seed",
    "write_dataset",
    "write_subject",
]
