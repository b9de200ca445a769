"""Benchmark results: one row per arm → ``results.parquet``, ``results.md`` and plots.

Pure functions of the results table (no Ray, no training), so they are tested on hand-made rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from goracs_ray.bench.config import FULL_DATA
from goracs_ray.io import atomic_file, write_parquet
from goracs_ray.report import ArmResult, lower_is_better, metric_order

__all__ = ["headline_metric", "results_markdown", "results_table", "write_results"]

_TIMES = ("select", "finetune", "evaluate")
_BASELINE = "random"


def headline_metric(task: str) -> str:
    """The metric plots and the "against random" table use: ``ndcg@10`` or ``auc`` (CTR)."""
    return "auc" if task == "ctr" else "ndcg@10"


def results_table(arms: Sequence[ArmResult]) -> pa.Table:
    """One row per arm: ``method, budget, seed``, one float64 column per metric, then
    ``select_s, finetune_s, evaluate_s`` (wall seconds of the stage when it ran)."""
    names = sorted({k for arm in arms for k in arm.metrics}, key=metric_order)
    columns: dict[str, list] = {"method": [], "budget": [], "seed": []}
    columns |= {name: [] for name in names} | {f"{t}_s": [] for t in _TIMES}
    for arm in arms:
        columns["method"].append(arm.method)
        columns["budget"].append(arm.budget)
        columns["seed"].append(arm.seed)
        for name in names:
            columns[name].append(arm.metrics.get(name))
        for t in _TIMES:
            columns[f"{t}_s"].append(arm.seconds.get(t, 0.0))
    types = {"method": pa.string(), "budget": pa.int64(), "seed": pa.int64()}
    return pa.table({k: pa.array(v, type=types.get(k, pa.float64())) for k, v in columns.items()})


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    skip = {"method", "budget", "seed", *(f"{t}_s" for t in _TIMES)}
    return [c for c in frame.columns if c not in skip]


def _cell(mean: float, std: float, n: int, digits: int) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _budget_section(frame: pd.DataFrame, full: pd.DataFrame, budget: int) -> list[str]:
    """Mean ± std table of one budget; the best mean of each metric (strict winner) in bold."""
    metrics = _metric_columns(frame)
    rows = frame[frame.budget == budget]
    order = list(dict.fromkeys(rows.method))
    stats = rows.groupby("method", sort=False)
    mean, std, count = stats.mean(numeric_only=True), stats.std(numeric_only=True), stats.size()
    best = {}
    for m in metrics:
        values = mean[m].dropna()
        if values.nunique() > 1:
            pick = values.idxmin() if lower_is_better(m) else values.idxmax()
            if (values == values[pick]).sum() == 1:
                best[m] = pick
    lines = [
        f"## Budget {budget}: mean ± std over seeds",
        "",
        "| method | seeds | " + " | ".join(metrics) + " | select s | finetune s |",
        "|---|---:|" + "---:|" * (len(metrics) + 2),
    ]

    def row(label: str, name: str, mean_row, std_row, n: int) -> str:
        cells = []
        for m in metrics:
            text = _cell(mean_row[m], std_row[m], n, 4)
            cells.append(f"**{text}**" if best.get(m) == name else text)
        cells += [_cell(mean_row[f"{t}_s"], std_row[f"{t}_s"], n, 1) for t in _TIMES[:2]]
        return f"| {label} | {n} | " + " | ".join(cells) + " |"

    for name in order:
        lines.append(row(name, name, mean.loc[name], std.loc[name], int(count[name])))
    if len(full):
        label = f"{FULL_DATA} ({int(full.budget.iloc[0])} samples, reference)"
        lines.append(
            row(
                label,
                FULL_DATA,
                full.mean(numeric_only=True),
                full.std(numeric_only=True),
                len(full),
            )
        )
    return lines


def _against_random(frame: pd.DataFrame, full: pd.DataFrame, metric: str) -> list[str]:
    """Paired (same seed) differences to random; "beyond spread" when the mean difference exceeds
    the larger of the two methods' seed standard deviations. The full-data row (if any) is the
    headroom: what fine-tuning on everything buys over a random coreset of each budget."""
    if _BASELINE not in set(frame.method) or metric not in frame:
        return []
    if frame.method.nunique() < 2 and full.empty:
        return []
    lines = [
        f"## Against random ({metric}, paired by seed)",
        "",
        "Δ = method − random on the same seed. *Beyond seed spread*: |mean Δ| exceeds the larger",
        "seed standard deviation of the two methods. The full-data row is the headroom: a coreset",
        "method can only show a gain where fine-tuning on more data does.",
        "",
        "| method | budget | mean Δ | std Δ | better on | beyond seed spread |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for budget in sorted(set(frame.budget)):
        rows = pd.concat([frame[frame.budget == budget], full])
        base = rows[rows.method == _BASELINE].set_index("seed")[metric]
        if base.empty:
            continue
        for name in dict.fromkeys(rows.method):
            if name == _BASELINE:
                continue
            own = rows[rows.method == name].set_index("seed")[metric]
            delta = (own - base).dropna()
            if delta.empty:
                continue
            sign = -1 if lower_is_better(metric) else 1
            better = int((sign * delta > 0).sum())
            if len(delta) < 2:
                spread_text, beyond = "–", "n/a (1 seed)"
            else:
                spread_text = f"{delta.std():.4f}"
                beyond = "no"
                if abs(delta.mean()) > max(own.std(), base.std()):
                    beyond = "yes, better" if sign * delta.mean() > 0 else "yes, worse"
            lines.append(
                f"| {name} | {budget} | {delta.mean():+.4f} | {spread_text} | "
                f"{better}/{len(delta)} | {beyond} |"
            )
    return lines


def results_markdown(table: pa.Table, *, metric: str, title: str, notes: Sequence[str] = ()) -> str:
    """``results.md``: one mean ± std table per budget (best in bold, full data as reference),
    the paired comparison against random on ``metric``, and the plots."""
    frame = table.to_pandas()
    full = frame[frame.method == FULL_DATA]
    chosen = frame[frame.method != FULL_DATA]
    lines = [f"# {title}", "", *notes, ""]
    for budget in sorted(set(chosen.budget)):
        lines += [*_budget_section(chosen, full, budget), ""]
    comparison = _against_random(chosen, full, metric)
    if comparison:
        lines += [*comparison, ""]
    lines += ["![metric vs budget](metric_vs_budget.png)", "", "![time](time.png)", ""]
    return "\n".join(lines)


def _plot(frame: pd.DataFrame, metric: str, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = frame[frame.method == FULL_DATA]
    chosen = frame[frame.method != FULL_DATA]
    reference = f"{FULL_DATA} ({int(full.budget.iloc[0])})" if len(full) else ""
    methods = list(dict.fromkeys(chosen.method))
    if chosen.budget.nunique() == 1:  # one budget: a dot per method, easier to read than lines
        stats = chosen.groupby("method", sort=False)[metric].agg(["mean", "std"]).fillna(0.0)
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(stats) + 1.5))
        ax.errorbar(stats["mean"], range(len(stats)), xerr=stats["std"], fmt="o", capsize=3)
        ax.set_yticks(range(len(stats)), stats.index)
        ax.invert_yaxis()
        if reference:
            ax.axvline(full[metric].mean(), color="k", linestyle="--", label=reference)
            ax.legend(fontsize="small")
        ax.set_xlabel(f"{metric} (mean ± std over seeds)")
        ax.set_title(f"{metric} at budget {int(chosen.budget.iloc[0])}")
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        markers = "osD^vPX*<>"
        for i, name in enumerate(methods):
            stats = chosen[chosen.method == name].groupby("budget")[metric]
            mean, std = stats.mean(), stats.std().fillna(0.0)
            ax.errorbar(
                mean.index, mean.values, yerr=std.values, capsize=3, label=name,
                marker=markers[i % len(markers)], linestyle=("-", "--", ":")[i // len(markers) % 3],
            )  # fmt: skip
        if reference:
            ax.axhline(full[metric].mean(), color="k", linestyle="--", label=reference)
        ax.set_xscale("log", base=2)
        budgets = sorted(int(b) for b in chosen.budget.unique())
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("budget n (training samples kept)")
        ax.set_ylabel(f"{metric} (mean ± std over seeds)")
        ax.set_title(f"{metric} vs budget")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    with atomic_file(out_dir / "metric_vs_budget.png") as part:
        fig.savefig(part, format="png", dpi=110)
    plt.close(fig)

    top = chosen[chosen.budget == chosen.budget.max()]
    times = pd.concat([top, full]).groupby("method", sort=False)[["select_s", "finetune_s"]].mean()
    fig, ax = plt.subplots(figsize=(7, 0.35 * len(times) + 1.5))
    ax.barh(times.index, times.select_s, label="selection")
    ax.barh(times.index, times.finetune_s, left=times.select_s, label="fine-tuning")
    ax.invert_yaxis()
    ax.set_xlabel("seconds (mean over seeds)")
    ax.set_title(f"selection vs fine-tuning time (budget {int(chosen.budget.max())})")
    ax.legend()
    fig.tight_layout()
    with atomic_file(out_dir / "time.png") as part:
        fig.savefig(part, format="png", dpi=110)
    plt.close(fig)


def write_results(
    out_dir: Path, table: pa.Table, *, metric: str, notes: Sequence[str] = ()
) -> Path:
    """Write ``results.parquet``, ``results.md``, ``metric_vs_budget.png`` and ``time.png``."""
    out_dir = Path(out_dir)
    if metric not in table.column_names:
        raise ValueError(
            f"`bench.metric` {metric!r} is not among the evaluated metrics "
            f"{[c for c in table.column_names if '@' in c or c in ('auc', 'log_loss')]}"
        )
    write_parquet(out_dir / "results.parquet", table)
    _plot(table.to_pandas(), metric, out_dir)
    text = results_markdown(
        table, metric=metric, title=f"goracs bench: {out_dir.name}", notes=notes
    )
    with atomic_file(out_dir / "results.md") as part:
        part.write_text(text)
    return out_dir / "results.md"
