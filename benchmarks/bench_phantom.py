"""Seconds per phantom subject at unit-test size and at full size (median of a few, after a warm-up).

.venv/bin/python benchmarks/bench_phantom.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

from calid_lightning.data.phantom import PhantomConfig, generate_subject

SIZES = {
    "unit (48x48, 32 dense slices, 6 frames)": PhantomConfig(size=(48, 48), frames=6, dense_slices=32),
    "full (128x128, ~48 dense slices, 25 frames)": PhantomConfig(),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    for name, config in SIZES.items():
        generate_subject(0, config)
        wall, cpu = [], []
        for seed in range(1, args.repeats + 1):
            start, start_cpu = time.perf_counter(), time.process_time()
            subject = generate_subject(seed, config)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        shape = "x".join(map(str, subject.image.shape))
        print(
            f"{name}: {statistics.median(wall):.3f} s/subject wall, {statistics.median(cpu):.3f} s CPU "
            f"(median of {args.repeats}; last {shape})"
        )


if __name__ == "__main__":
    main()
