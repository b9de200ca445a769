"""GPU check (issue 14): cost rows and OT candidate screening in numpy vs a torch device.

Problem: N × M Gaussian-mixture embeddings (:func:`goracs_ray.select.synthetic.mixture_problem`),
log-normal gradient norms, λ = 0.5, corrected estimator, cut_num = 30.

    PYTHONPATH=. python benchmarks/gpu_check_select.py                      # cuda, 200k × 2k, d 256
    PYTHONPATH=. python benchmarks/gpu_check_select.py --device cpu --quick # torch-cpu, < 60 s

``--device cpu`` runs the torch path on CPU tensors (``torch-cpu``, one thread), so the script is
exercised without a GPU; its timings say nothing about a GPU. Prints one ``name: value`` line per
figure: the largest row difference, whether the screening and the coreset equal numpy's, then the
timings, the speed-up last.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from goracs_ray.select import kernels
from goracs_ray.select.cost import cost_matrix
from goracs_ray.select.greedy import greedy_init
from goracs_ray.select.itra import itra
from goracs_ray.select.ot import solve_ot
from goracs_ray.select.refine import dual_columns
from goracs_ray.select.rowstore import memory_store, recomputed_store
from goracs_ray.select.synthetic import mixture_problem


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _describe(device: str) -> str:
    import torch

    if device == kernels.TORCH_CPU:
        torch.set_num_threads(1)  # several threads crawl on a shared 2-core box
        return f"torch {torch.__version__} on CPU tensors, 1 thread"
    return f"torch {torch.__version__} on {torch.cuda.get_device_name(torch.device(device))}"


def _screen(store, duals, members, repeats: int):
    """Candidates of one dual refresh: (first call, incl. group minima; best of ``repeats``)."""
    first, t_first = _timed(store.candidates, duals, members, cut_num=30, estimator="corrected")
    best = min(
        _timed(store.candidates, duals, members, cut_num=30, estimator="corrected")[1]
        for _ in range(repeats)
    )
    return first, t_first, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (= torch-cpu)")
    parser.add_argument("--quick", action="store_true", help="3,000 × 300, d 32, n 30")
    parser.add_argument("--max-iters", type=int, help="accepted swaps (default 5, quick 3)")
    args = parser.parse_args()
    device = kernels.resolve_device(kernels.TORCH_CPU if args.device == "cpu" else args.device)
    n_train, n_valid, dim, n = (3000, 300, 32, 30) if args.quick else (200_000, 2000, 256, 512)
    max_iters = args.max_iters or (3 if args.quick else 5)
    lam = 0.5
    print(f"problem: N={n_train} M={n_valid} d={dim} n={n} lam={lam} max_iters={max_iters}")
    print(f"device: {device} ({_describe(device)})")
    train, valid, grads = mixture_problem(n_train, n_valid, dim=dim)
    _, t_warm = _timed(kernels.distance_block, train[:64], valid[:64], device=device)
    print(f"device_warmup_seconds: {t_warm:.2f}")

    ref, t_np = _timed(cost_matrix, train, valid, grads, lam=lam)
    dev, t_dev = _timed(cost_matrix, train, valid, grads, lam=lam, device=device)
    print(f"rows_max_abs_diff: {np.abs(dev.values - ref.values).max():.3g} (contract: <= 1e-6)")
    sample = np.random.default_rng(0).choice(n_train, min(n_train, 1000), replace=False)
    recomputed, _ = recomputed_store(train, valid, grads, lam=lam, device=device)
    diff = np.abs(recomputed.rows(sample) - ref.values[sample]).max()
    print(f"recomputed_rows_max_abs_diff: {diff:.3g} ({len(sample)} rows)")

    np_store = memory_store(ref.values)
    dev_store = memory_store(dev.values, device=device)
    members = greedy_init(memory_store(ref.values), n).indices  # a store of its own: greedy
    # state is cached per store, and the two stores below run the greedy stage afresh in itra
    rows = ref.values[members]
    duals = dual_columns(rows, solve_ot(rows).u, members)
    want, t_np_first, t_np_screen = _screen(np_store, duals, members, repeats=3)
    got, t_dev_first, t_dev_screen = _screen(dev_store, duals, members, repeats=3)
    same = np.array_equal(got.pairs, want.pairs) and got.n_scored == want.n_scored
    print(f"screening_same_candidates: {'yes' if same else 'no'} ({want.n_scored} rows scored)")

    np_run, t_np_itra = _timed(itra, np_store, n, max_iters=max_iters)
    dev_run, t_dev_itra = _timed(itra, dev_store, n, max_iters=max_iters)
    equal = np.array_equal(np_run.indices, dev_run.indices)
    swaps = len(np_run.poo_trace) - 1
    print(f"coreset_equal: {'yes' if equal else 'no'} (n={n}, {swaps} swaps, POO {np_run.poo:.6f}"
          f" vs {dev_run.poo:.6f})")  # fmt: skip
    if device.startswith("cuda"):
        import torch

        print(f"device_peak_memory_mb: {torch.cuda.max_memory_allocated(device) / 2**20:.0f}")
    print(f"cost_rows_seconds: numpy {t_np:.2f}, {device} {t_dev:.2f}")
    print(f"screening_first_seconds: numpy {t_np_first:.3f}, {device} {t_dev_first:.3f} "
          "(incl. group minima of every row)")  # fmt: skip
    print(f"screening_refresh_seconds: numpy {t_np_screen:.3f}, {device} {t_dev_screen:.3f}")
    print(f"itra_seconds: numpy {t_np_itra:.2f}, {device} {t_dev_itra:.2f} (OT and greedy on CPU)")
    print(f"speedup_cost_rows: {t_np / t_dev:.2f}x")
    print(f"speedup_screening_refresh: {t_np_screen / t_dev_screen:.2f}x")
    total_np, total_dev = t_np + t_np_first, t_dev + t_dev_first
    print(f"speedup_cost_rows_and_first_screening: {total_np / total_dev:.2f}x")


if __name__ == "__main__":
    main()
