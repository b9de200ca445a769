"""`python -m goracs_ray.demo` (`make demo`): GORACS selection on a synthetic problem.

A smaller version of benchmarks/bench_itra.py (4,000 × 1,500, 768-d, n = 300, λ = 0.5): builds
the POO cost, runs the greedy stage and the exchange refinement with both estimators, and prints
the POO trace and timings. Runs in about a minute on a 2-core CPU.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from goracs_ray.select import select_coreset
from goracs_ray.select.synthetic import mixture_problem


def main() -> None:
    """Run the demo and print its trace."""
    logging.basicConfig(level=logging.WARNING)
    n_train, n_valid, n, lam = 4000, 1500, 300, 0.5
    print(f"GORACS demo: N={n_train} train, M={n_valid} valid, d=768, budget n={n}, lam={lam}")
    train, valid, grads = mixture_problem(n_train, n_valid, seed=0)
    ids = np.array([f"train-{i:05d}" for i in range(n_train)])
    for estimator in ("corrected", "faithful"):
        t0 = time.perf_counter()
        res = select_coreset(
            train, valid, grads, n, lam, ids=ids, estimator=estimator, max_iters=30,
            cut_num=30, time_limit=20.0,
        )  # fmt: skip
        part = res.parts[0]
        ref = part.refinement
        print(f"\n[{estimator}] greedy POO {part.poo_greedy:.5f}")
        for k, (poo, sec) in enumerate(zip(part.poo_trace[1:], ref.swap_seconds[1:]), 1):
            print(f"  swap {k:3d}  t={sec:6.2f}s  POO {poo:.5f}")
        secs = ", ".join(f"{k} {v:.2f}s" for k, v in res.seconds.items())
        print(
            f"  final POO {part.poo:.5f} after {len(part.poo_trace) - 1} swaps, "
            f"{res.n_ot_solves} OT solves, stop: {ref.stop_reason.value}; {secs} "
            f"(wall {time.perf_counter() - t0:.1f}s)"
        )
        print(f"  first selected ids: {', '.join(res.ids[:5].tolist())}")


if __name__ == "__main__":
    main()
