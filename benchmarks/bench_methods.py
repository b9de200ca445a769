"""Every selection method against GORACS: `goracs bench` on ml-100k SeqRec, figures as lines.

Runs ``jobs/configs/bench_ml100k.yaml`` (14 methods at budget 256, 3 seeds; every stage cached so
a re-run costs seconds), or another bench config with ``--config`` (its headroom and premise
variants, the CTR ones), or with ``--quick`` the config's ``bench.quick`` variant (Ray Train
start-up per arm dominates). Prints one ``name: value`` line per method (headline metric, mean ±
std over seeds and its 95 % bootstrap CI over test samples and seeds), the total time, the
headroom (full data − random per budget) and the premise (Spearman ρ of POO with the valid loss
over the study's coresets) for configs that have them, and last the headline: GORACS minus random,
paired by seed and test sample, with its 95 % CI and verdict (the largest budget; smaller ones
just before).

Usage: PYTHONPATH=. python benchmarks/bench_methods.py [--quick] [--config PATH]
"""

from __future__ import annotations

import argparse
import logging

from goracs_ray.bench import load_bench_config, run_bench
from goracs_ray.bench.config import FULL_DATA
from goracs_ray.results import against_random, headline_metric, method_intervals
from goracs_ray.stats import Interval, verdict


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
    cis = method_intervals(result.table, metric)
    deltas = against_random(result.table, metric)
    stats = frame.groupby(["method", "budget"], sort=False)[metric].agg(["mean", "std", "size"])
    for (method, budget), row in stats.iterrows():
        spread = f" ± {row['std']:.4f}" if row["size"] > 1 else ""
        ci = cis.get((method, int(budget)))
        bounds = f" [{ci.low:.4f}, {ci.high:.4f}]" if ci is not None and ci.has_ci else ""
        samples = f", {ci.n_samples} test samples" if bounds else ""
        print(
            f"{method}_b{budget}_{metric}: {row['mean']:.4f}{spread}{bounds} "
            f"({int(row['size'])} seeds{samples})"
        )
    print(f"arms: {len(frame)}")
    print(f"stage_seconds_sum: {frame[['select_s', 'finetune_s', 'evaluate_s']].sum().sum():.0f}")
    print(f"wall_minutes_this_invocation: {result.seconds / 60:.1f}")
    for (method, budget), d in deltas.items():
        if method == FULL_DATA:
            print(f"headroom_full_data_minus_random_b{budget}_{metric}: {_delta(d)}")
    if cfg.bench.poo_correlation is not None:
        import pandas as pd

        from goracs_ray.bench.premise import correlations

        rows = pd.read_parquet(result.run_dir / "poo.parquet")
        for c in correlations(rows, ["valid_loss", "test_loss", metric]):
            if c.x == "poo":
                print(
                    f"premise_spearman_poo_vs_{c.y}: {c.rho:+.3f} [{c.low:+.3f}, {c.high:+.3f}] "
                    f"({c.n} coresets)"
                )
    goracs = sorted((b, d) for (m, b), d in deltas.items() if m == "goracs")
    for budget, d in goracs[:-1]:
        print(f"goracs_minus_random_b{budget}_{metric}: {_delta(d)}")
    if goracs:  # the headline, last: the largest budget
        budget, d = goracs[-1]
        print(f"goracs_minus_random_{metric}: {_delta(d)} at budget {budget}")


def _delta(d: Interval) -> str:
    """``+0.0100 [-0.0100, +0.0300] (paired over 3 seeds × 500 test samples: no difference)``."""
    if not d.has_ci:
        return f"{d.mean:+.4f} (paired over {d.n_seeds} seeds; no per-sample predictions)"
    return (
        f"{d.format(signed=True)} (paired over {d.n_seeds} seeds × {d.n_samples} test samples: "
        f"{verdict(d)})"
    )


if __name__ == "__main__":
    main()
