"""The method's premise, measured: does a lower POO mean a better fine-tune?

GORACS minimises POO because POO bounds the test loss. Over many coresets of one budget (extra
random subsets plus every method's coresets) this module computes each coreset's POO and its
two terms (:func:`goracs_ray.select.poo.coreset_poo`), pairs them with the fine-tuned valid
loss, test loss and headline metric, and reports Spearman rank correlations with 95 % bootstrap
intervals over coresets. Writes ``poo.parquet`` and the markdown section of ``results.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from goracs_ray.bench.config import FULL_DATA
from goracs_ray.io import write_parquet
from goracs_ray.select.poo import coreset_poo, spearman

__all__ = ["Correlation", "correlations", "premise_lines", "premise_table"]

_N_BOOT = 2000


@dataclasses.dataclass(frozen=True)
class Correlation:
    """Spearman ρ between POO (or one of its terms) and an outcome, over coresets."""

    x: str
    """``poo``, ``ot_distance`` or ``grad_bonus``."""
    y: str
    """The outcome: ``valid_loss``, ``test_loss`` or the headline metric."""
    rho: float
    low: float
    high: float
    """95 % percentile bootstrap interval (coresets resampled with replacement)."""
    n: int
    """Coresets."""


def premise_table(
    table: pa.Table,
    features,
    *,
    budget: int,
    lam: float,
    run_dir: Path,
) -> pd.DataFrame:
    """One row per coreset of ``budget``: method, seed, POO terms and the arm's metrics.

    ``table``: the bench results (``results_table``); ``features``: the FeatureTable the
    coresets were chosen from; coresets are read from ``select/<method>/b<budget>-s<seed>/``.
    Written to ``run_dir/poo.parquet``.
    """
    frame = table.to_pandas()
    rows = frame[(frame.budget == budget) & (frame.method != FULL_DATA)].reset_index(drop=True)
    coresets = {}
    for row in rows.itertuples():
        path = run_dir / "select" / row.method / f"b{budget}-s{row.seed}" / "coreset.parquet"
        coresets[f"{row.method}/{row.seed}"] = pq.read_table(path).column("sample_id").to_pylist()
    terms = coreset_poo(features, coresets, lam=lam)
    for name in ("poo", "ot_distance", "grad_bonus"):
        rows[name] = [getattr(terms[f"{r.method}/{r.seed}"], name) for r in rows.itertuples()]
    keep = ["method", "seed", "poo", "ot_distance", "grad_bonus"]
    keep += [c for c in rows.columns if c not in keep and not c.endswith("_s")]
    rows = rows[[c for c in keep if c in rows.columns and c not in ("budget", "predictions")]]
    write_parquet(run_dir / "poo.parquet", pa.Table.from_pandas(rows, preserve_index=False))
    return rows


def correlations(
    rows: pd.DataFrame, outcomes: Sequence[str], *, seed: int = 0
) -> list[Correlation]:
    """ρ of each POO term with each outcome present in ``rows``, with bootstrap intervals."""
    rng = np.random.default_rng(seed)
    out = []
    n = len(rows)
    draws = rng.integers(0, n, size=(_N_BOOT, n)) if n else np.zeros((0, 0), int)
    for x in ("poo", "ot_distance", "grad_bonus"):
        for y in outcomes:
            if y not in rows or rows[y].isna().any():
                continue
            a, b = rows[x].to_numpy(float), rows[y].to_numpy(float)
            rho = spearman(a, b)
            boot = np.array([spearman(a[i], b[i]) for i in draws])
            boot = boot[~np.isnan(boot)]
            low, high = np.quantile(boot, [0.025, 0.975]) if boot.size else (np.nan, np.nan)
            out.append(Correlation(x, y, rho, float(low), float(high), n))
    return out


def premise_lines(rows: pd.DataFrame, metric: str, *, budget: int, lam: float) -> list[str]:
    """The ``results.md`` section: correlations, then the POO terms per method."""
    outcomes = ["valid_loss", "test_loss", metric]
    found = correlations(rows, outcomes)
    lines = [
        f"## The premise: POO against the fine-tuned result (budget {budget}, λ = {lam})",
        "",
        f"Spearman ρ over {len(rows)} coresets (extra random subsets `poo_random` plus every "
        "method's coresets), 95 % bootstrap interval over coresets. GORACS's premise is a "
        "positive ρ between POO and the losses (negative with a higher-is-better metric).",
        "",
        "| POO term | outcome | ρ | 95 % CI | coresets |",
        "|---|---|---:|---|---:|",
    ]
    for c in found:
        lines.append(f"| {c.x} | {c.y} | {c.rho:+.3f} | [{c.low:+.3f}, {c.high:+.3f}] | {c.n} |")
    lines += [
        "",
        "POO = (ot_distance − λ · grad_bonus − low) / (high − low): `ot_distance` is the OT "
        "distance to the validation set, `grad_bonus` the coreset's mean normalised gradient "
        "norm. Per method (mean over its coresets):",
        "",
        "| method | coresets | POO | ot_distance | grad_bonus | " + " | ".join(outcomes) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(outcomes),
    ]
    present = [o for o in outcomes if o in rows]
    for method, group in rows.groupby("method", sort=False):
        cells = [f"{group[c].mean():.4f}" for c in ("poo", "ot_distance", "grad_bonus")]
        cells += [f"{group[o].mean():.4f}" if o in present else "–" for o in outcomes]
        lines.append(f"| {method} | {len(group)} | " + " | ".join(cells) + " |")
    return lines
