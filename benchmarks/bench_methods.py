"""Every selection method against GORACS: `goracs bench` on ml-100k SeqRec, figures as lines.

Runs ``jobs/configs/bench_ml100k.yaml`` (13 methods + a faithful-estimator GORACS variant, budget
1024, 3 seeds, full-data reference; ~45-60 min on 2 CPU cores, every stage cached so a re-run
costs seconds) or, with ``--quick``, its ``bench.quick`` variant (~2 min: Ray Train start-up per
arm dominates). Prints one ``name: value`` line per method (headline metric, mean ± std over
seeds), the total time, and last the headline: GORACS minus random, paired by seed.

Usage: PYTHONPATH=. python benchmarks/bench_methods.py [--quick] [--config PATH]
"""

from __future__ import annotations

import argparse
import logging

from goracs_ray.bench import load_bench_config, run_bench
from goracs_ray.bench.results import headline_metric


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="the config's bench.quick variant")
    parser.add_argument("--config", default="jobs/configs/bench_ml100k.yaml")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cfg = load_bench_config(args.config, quick=args.quick)
    result = run_bench(cfg, progress=False)
    frame = result.table.to_pandas()
    metric = cfg.bench.metric or headline_metric(cfg.data.task.value)
    stats = frame.groupby(["method", "budget"], sort=False)[metric].agg(["mean", "std", "size"])
    for (method, budget), row in stats.iterrows():
        spread = f" ± {row['std']:.4f}" if row["size"] > 1 else ""
        print(f"{method}_b{budget}_{metric}: {row['mean']:.4f}{spread} ({int(row['size'])} seeds)")
    print(f"arms: {len(frame)}")
    print(f"stage_seconds_sum: {frame[['select_s', 'finetune_s', 'evaluate_s']].sum().sum():.0f}")
    print(f"wall_minutes_this_invocation: {result.seconds / 60:.1f}")
    paired = frame.pivot_table(index=["budget", "seed"], columns="method", values=metric)
    if {"goracs", "random"} <= set(paired.columns):
        delta = paired["goracs"] - paired["random"]
        spread = frame[frame.method == "random"][metric].std()
        print(
            f"goracs_minus_random_{metric}: {delta.mean():+.4f} "
            f"(paired over {len(delta)} seeds; random's seed std {spread:.4f})"
        )


if __name__ == "__main__":
    main()
