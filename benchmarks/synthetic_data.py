"""Time building the synthetic benchmark: ``build_dataset("synthetic", None, num_rows=N)``.

Target: 10,000 rows in under 30 s on a 2-core machine. Prints seconds and rows/s per repeat and the
best of them; the first repeat includes importing and warming up `datasets`.

    python benchmarks/synthetic_data.py [--rows 10000] [--repeats 3] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import time

from fair_trl.data import build_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    times = []
    for repeat in range(args.repeats):
        start = time.perf_counter()
        dataset_dict = build_dataset("synthetic", None, num_rows=args.rows, seed=args.seed)
        seconds = time.perf_counter() - start
        rows = sum(len(split) for split in dataset_dict.values())
        assert rows == args.rows, (rows, args.rows)
        times.append(seconds)
        print(f"repeat {repeat + 1}: {rows} rows in {seconds:.2f} s ({rows / seconds:,.0f} rows/s)")
    best = min(times)
    print(
        json.dumps(
            {
                "rows": args.rows,
                "best_seconds": round(best, 3),
                "rows_per_second": round(args.rows / best),
                "target_seconds": 30.0,
                "within_target": best < 30.0,
            }
        )
    )


if __name__ == "__main__":
    main()
