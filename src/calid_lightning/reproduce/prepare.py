"""The data stage of `make reproduce-table`: generate the phantom in parallel, then prepare each subject once.

    python -m calid_lightning.reproduce.prepare --data data_modules/phantom.yaml --jobs 2

Phantom subjects are independent (subject ``i`` uses a seed derived from the data-set seed and ``i``), so
``--jobs`` processes generate them side by side while this process writes them in turn (the phantom folder's
manifest has one writer); the result is the same as ``CardiacDataModule.prepare_data`` writing them.
``setup`` then reads and prepares every subject, filling the DataModule's disk cache so that the training
stages started next do not each pay for it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path
from typing import Any

from calid_lightning.data.config import build_datamodule, data_init_args
from calid_lightning.data.subject import DataError


def _generate_one(seed: int, index: int, options: dict[str, Any]) -> Any:
    """Phantom subject ``index`` of the data set with seed ``seed`` (in a worker process)."""
    from calid_lightning.data.phantom import PhantomConfig, generate_subject, subject_seed

    return generate_subject(subject_seed(seed, index), PhantomConfig(**options))


def generate_phantom(init_args: dict[str, Any], jobs: int) -> int:
    """Write the phantom of ``init_args["phantom"]`` into ``init_args["root"]``; returns the subject count.

    The folder is claimed first (a folder the phantom does not own is refused before anything runs); at most
    ``jobs`` subjects are generated at once and each is written here as soon as it is its turn.
    """
    from calid_lightning.data.phantom import write_subject
    from calid_lightning.data.phantom.io import claim_folder

    options = dict(init_args.get("phantom") or {})
    if not options:
        return 0
    subjects, seed = int(options.pop("subjects", 20)), int(options.pop("seed", 0))
    root = Path(init_args.get("root", "data/phantom"))
    claim_folder(root)
    jobs = max(1, jobs)
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        pending: deque[tuple[int, Future]] = deque()
        for index in range(1, subjects + 1):
            pending.append((index, pool.submit(_generate_one, seed, index, options)))
            if len(pending) > jobs:
                ready, future = pending.popleft()
                write_subject(future.result(), root, ready)
        while pending:
            ready, future = pending.popleft()
            write_subject(future.result(), root, ready)
    return subjects


def main(argv: list[str] | None = None) -> int:
    """Generate (phantom only) and prepare the data set of ``--data``; 1 on bad data."""
    parser = argparse.ArgumentParser(prog="python -m calid_lightning.reproduce.prepare", description=__doc__)
    parser.add_argument("--data", required=True, help="data config YAML")
    parser.add_argument("--jobs", type=int, default=1, help="processes writing phantom subjects")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        class_path, init_args = data_init_args(args.data, [])
        written = generate_phantom(init_args, args.jobs)
        if written:
            print(f"phantom: {written} subjects in {init_args['root']} ({time.perf_counter() - start:.0f} s)")
        datamodule = build_datamodule(class_path, init_args)
    except (DataError, ValueError) as exc:
        print(f"data stage: error: {exc}", file=sys.stderr)
        return 1
    sizes = {split: len(datamodule.subjects(split)) for split in ("train", "val", "test")}
    print(f"prepared {sum(sizes.values())} subjects {sizes} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
