"""Time `prepare` on MovieLens-100K (SeqRec, then CTR); the SeqRec time is the headline.

    python benchmarks/bench_prepare.py [--quick] [--cache-dir DIR]

Fetches ml-100k into the cache first if needed (not timed). ``--quick`` caps the pool to 100 users.
Prints one ``name: value`` line per figure, ``prepare_ml100k_seqrec_s`` last.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from goracs_ray.data import DataConfig, SourceConfig, Task, fetch_ml100k, prepare
from goracs_ray.io import read_json


def _time(cfg: DataConfig, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    samples = prepare(cfg, out, force=True, progress=False)
    return time.perf_counter() - start, read_json(samples / "dataset_card.json")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="100 users only")
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args()
    fetch_ml100k(cache_dir=args.cache_dir)
    max_users = 100 if args.quick else None
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in (Task.CTR, Task.SEQREC):
            cfg = DataConfig(
                source=SourceConfig(cache_dir=args.cache_dir), task=task, max_users=max_users
            )
            results[task] = _time(cfg, Path(tmp) / task.value)
    card = results[Task.SEQREC][1]
    print(f"source_users: {card['source']['users']}")
    print(f"source_items: {card['source']['items']}")
    print(f"source_interactions: {card['source']['interactions']}")
    for task in (Task.SEQREC, Task.CTR):
        for split, stats in results[task][1]["splits"].items():
            print(f"{task.value}_{split}_samples: {stats['samples']}")
    print(f"prepare_ml100k_ctr_s: {results[Task.CTR][0]:.2f}")
    print(f"prepare_ml100k_seqrec_s: {results[Task.SEQREC][0]:.2f}")


if __name__ == "__main__":
    main()
