"""The one reporter of `goracs run` and `goracs bench`: arms → ``results.parquet``,
``results.md`` and plots.

Pure functions of the results table and the arms' ``predictions.parquet`` (no Ray, no training),
so they are tested on hand-made rows. Confidence intervals and paired comparisons come from
:mod:`goracs_ray.stats` (two-level bootstrap over test samples and seeds; one seed: over test
samples only).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from goracs_ray.io import atomic_file, write_parquet
from goracs_ray.stats import (
    N_BOOT,
    Interval,
    bootstrap_ci,
    lower_is_better,
    metric_order,
    paired_bootstrap,
    read_values,
    verdict,
)

__all__ = [
    "FULL_DATA",
    "ArmResult",
    "Headroom",
    "against_random",
    "headline_metric",
    "headroom",
    "log_headroom",
    "method_intervals",
    "reference_against",
    "results_markdown",
    "results_table",
    "write_results",
]

logger = logging.getLogger(__name__)

FULL_DATA = "full_data"
"""Name of the arms fine-tuned on the whole training split (the reference row)."""

REFERENCE = "goracs"
"""The arm ``results.md`` compares with every other method at its budget (*GORACS against every
method*): the default name of the GORACS arm in ``goracs bench``."""


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """One arm's outcome (select → finetune → evaluate)."""

    method: str
    """Arm name: the selection method (registry) or a bench label such as ``goracs_lam0``."""
    budget: int
    """Coreset size n (full data: the training split's size)."""
    seed: int
    """Selection seed."""
    metrics: dict[str, float]
    """Evaluation metrics, e.g. ``{"ndcg@10": 0.031, "hr@10": 0.07}``."""
    seconds: dict[str, float]
    """Wall time per stage: ``{"select": …, "finetune": …, "evaluate": …}``."""
    poo_trace: Sequence[float] = ()
    """POO after greedy and after each accepted exchange (GORACS only)."""
    predictions: str | None = None
    """Path of the arm's ``predictions.parquet`` (per-test-sample values behind the CIs)."""


_TIMES = ("select", "finetune", "evaluate")
_BASELINE = "random"
_KEY_METRICS = ("ndcg@10", "hr@10", "test_loss", "auc", "log_loss", "valid_loss")
"""Shown with their 95 % CI in the budget tables (after the headline); the rest as mean ± std."""
_NOT_METRICS = {"method", "budget", "seed", "predictions", *(f"{t}_s" for t in _TIMES)}


def headline_metric(task: str) -> str:
    """The metric plots and the "against random" table use: ``ndcg@10`` or ``auc`` (CTR)."""
    return "auc" if task == "ctr" else "ndcg@10"


def results_table(arms: Sequence[ArmResult]) -> pa.Table:
    """One row per arm: ``method, budget, seed``, one float64 column per metric, then
    ``select_s, finetune_s, evaluate_s`` (wall seconds of the stage when it ran) and
    ``predictions`` (path of the arm's ``predictions.parquet``, null if unknown)."""
    names = sorted({k for arm in arms for k in arm.metrics}, key=metric_order)
    columns: dict[str, list] = {"method": [], "budget": [], "seed": []}
    columns |= {name: [] for name in names} | {f"{t}_s": [] for t in _TIMES}
    columns["predictions"] = []
    for arm in arms:
        columns["method"].append(arm.method)
        columns["budget"].append(arm.budget)
        columns["seed"].append(arm.seed)
        for name in names:
            columns[name].append(arm.metrics.get(name))
        for t in _TIMES:
            columns[f"{t}_s"].append(arm.seconds.get(t, 0.0))
        columns["predictions"].append(arm.predictions)
    types = {"method": pa.string(), "budget": pa.int64(), "seed": pa.int64()}
    types["predictions"] = pa.string()
    return pa.table({k: pa.array(v, type=types.get(k, pa.float64())) for k, v in columns.items()})


def _metric_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in _NOT_METRICS]


def _paths(rows: pd.DataFrame, root: Path | None) -> dict[int, str | None]:
    """seed → predictions path (relative paths resolved against ``root``); None if unknown."""
    if "predictions" not in rows:
        return {int(s): None for s in rows.seed}
    out = {}
    for seed, path in zip(rows.seed, rows.predictions, strict=True):
        if not isinstance(path, str):
            out[int(seed)] = None
        else:
            p = Path(path)
            out[int(seed)] = str(p if p.is_absolute() or root is None else Path(root) / p)
    return out


def _estimate(rows: pd.DataFrame, metric: str, root: Path | None) -> Interval | None:
    """One method's metric over its seeds: a bootstrap CI when every seed has per-sample values,
    else the plain mean over seeds (no CI)."""
    if metric not in rows or rows[metric].isna().all():
        return None
    values = read_values(_paths(rows, root), metric)
    if values:
        return bootstrap_ci(values)
    nan = float("nan")
    return Interval(metric, float(rows[metric].mean()), nan, nan, 0, int(rows[metric].count()))


def _delta(
    rows: pd.DataFrame, base: pd.DataFrame, metric: str, root: Path | None
) -> Interval | None:
    """``rows − base`` paired by seed (and by sample_id when both have predictions)."""
    if metric not in rows:
        return None
    own = rows.set_index("seed")[metric]
    ref = base.set_index("seed")[metric]
    seeds = sorted(set(own.dropna().index) & set(ref.dropna().index))
    if not seeds:
        return None
    pick = lambda r: r[r.seed.isin(seeds)]  # noqa: E731
    a, b = (
        read_values(_paths(pick(rows), root), metric),
        read_values(_paths(pick(base), root), metric),
    )
    if a and b:
        return paired_bootstrap(a, b)
    nan = float("nan")
    diff = float((own[seeds] - ref[seeds]).mean())
    return Interval(metric, diff, nan, nan, 0, len(seeds))


def _split(table: pa.Table | pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    return frame[frame.method != FULL_DATA], frame[frame.method == FULL_DATA]


def method_intervals(
    table: pa.Table, metric: str, *, root: Path | None = None
) -> dict[tuple[str, int], Interval]:
    """(method, budget) → mean over seeds of ``metric`` with its 95 % CI (full data included,
    at its number of training samples); no CI where per-sample predictions are missing."""
    frame = table.to_pandas() if isinstance(table, pa.Table) else table
    out = {}
    for (name, budget), rows in frame.groupby(["method", "budget"], sort=False):
        estimate = _estimate(rows, metric, root)
        if estimate is not None:
            out[name, int(budget)] = estimate
    return out


def _paired_per_budget(
    table: pa.Table | pd.DataFrame,
    metric: str,
    anchor: str,
    root: Path | None,
    *,
    anchor_first: bool,
    with_full_data: bool,
) -> dict[tuple[str, int], Interval]:
    """(method, budget) → paired Δ between each method and ``anchor`` at that budget:
    ``anchor − method`` if ``anchor_first`` else ``method − anchor``."""
    chosen, full = _split(table)
    out = {}
    for budget in sorted(set(chosen.budget)):
        rows = chosen[chosen.budget == budget]
        if with_full_data:
            rows = pd.concat([rows, full])
        base = rows[rows.method == anchor]
        if base.empty:
            continue
        for name in dict.fromkeys(rows.method):
            if name == anchor:
                continue
            own = rows[rows.method == name]
            delta = (
                _delta(base, own, metric, root) if anchor_first else _delta(own, base, metric, root)
            )
            if delta is not None:
                out[name, int(budget)] = delta
    return out


def against_random(
    table: pa.Table, metric: str, *, root: Path | None = None
) -> dict[tuple[str, int], Interval]:
    """(method, budget) → paired ``method − random`` at that budget (seeds by value, samples by
    sample_id, :func:`goracs_ray.stats.paired_bootstrap`); the full-data row at every budget is
    the headroom. Empty without ``random`` arms."""
    return _paired_per_budget(
        table, metric, _BASELINE, root, anchor_first=False, with_full_data=True
    )


def reference_against(
    table: pa.Table, metric: str, *, reference: str = REFERENCE, root: Path | None = None
) -> dict[tuple[str, int], Interval]:
    """(method, budget) → paired ``reference − method`` for every other method at a budget
    where ``reference`` has arms (random included, full data not), paired as
    :func:`against_random`: a positive Δ with a CI above 0 means the reference (GORACS) is
    better than that method. Empty without ``reference`` arms."""
    return _paired_per_budget(
        table, metric, reference, root, anchor_first=True, with_full_data=False
    )


@dataclasses.dataclass(frozen=True)
class Headroom:
    """Does fine-tuning on more data help at all? ``random`` per budget against full data."""

    metric: str
    """The headline metric."""
    random: dict[int, Interval]
    """budget → ``random``'s metric with its CI."""
    full_data: Interval | None
    """The full-data arms' metric (None without ``bench.full_data``)."""
    gaps: dict[int, Interval]
    """budget → paired ``full_data − random@budget``: the most a coreset of that size can gain."""
    steps: dict[tuple[int, int], Interval]
    """(smaller, next budget) → paired ``random@next − random@smaller``."""

    @property
    def absent(self) -> list[int]:
        """Budgets where full data does not beat random with a CI excluding 0 (CI known)."""
        return [b for b, gap in self.gaps.items() if gap.has_ci and verdict(gap) != "better"]

    def lines(self) -> list[str]:
        """The ``headroom: …`` and ``random@b2 − random@b1 …`` lines of ``results.md``."""
        out = []
        for budget, gap in self.gaps.items():
            state = {"better": "present", "n/a": "unknown (no per-sample predictions)"}
            state = state.get(verdict(gap), f"absent ({verdict(gap)})")
            out.append(
                f"- headroom: {FULL_DATA} − {_BASELINE}@{budget} = "
                f"{gap.format(signed=True)} ({gap.size()}): {state}"
            )
        for (lo, hi), step in self.steps.items():
            word = {"better": "improves", "worse": "worsens"}.get(verdict(step), verdict(step))
            out.append(
                f"- {_BASELINE}@{hi} − {_BASELINE}@{lo} = {step.format(signed=True)} "
                f"({step.size()}): {self.metric} {word} with the budget"
            )
        return out


def headroom(table: pa.Table, metric: str, *, root: Path | None = None) -> Headroom | None:
    """The headroom of a benchmark table; None without ``random`` arms."""
    chosen, full = _split(table)
    base = chosen[chosen.method == _BASELINE]
    if base.empty:
        return None
    budgets = sorted(int(b) for b in set(base.budget))
    randoms = {b: _estimate(base[base.budget == b], metric, root) for b in budgets}
    gaps, steps = {}, {}
    for b in budgets:
        if not full.empty:
            gaps[b] = _delta(full, base[base.budget == b], metric, root)
    for lo, hi in zip(budgets, budgets[1:], strict=False):
        steps[lo, hi] = _delta(base[base.budget == hi], base[base.budget == lo], metric, root)
    return Headroom(
        metric,
        {b: v for b, v in randoms.items() if v is not None},
        _estimate(full, metric, root) if not full.empty else None,
        {b: v for b, v in gaps.items() if v is not None},
        {k: v for k, v in steps.items() if v is not None},
    )


def _ci_cell(estimate: Interval | None, rows: pd.DataFrame, metric: str, digits: int = 4) -> str:
    """``mean [low, high]``; without a CI ``mean ± std`` over seeds (``mean`` for one seed)."""
    if estimate is None or (metric in rows and rows[metric].isna().all()):
        return "–"
    if estimate.has_ci:
        return estimate.format(digits)
    return _cell(float(rows[metric].mean()), float(rows[metric].std()), len(rows), digits)


def _cell(mean: float, std: float, n: int, digits: int) -> str:
    if np.isnan(mean):
        return "–"
    return f"{mean:.{digits}f}" if n < 2 else f"{mean:.{digits}f} ± {std:.{digits}f}"


def _key_metrics(frame: pd.DataFrame, metric: str) -> list[str]:
    present = _metric_columns(frame)
    return [metric] + [m for m in _KEY_METRICS if m in present and m != metric]


def _bold_best(means: dict[str, float], metric: str) -> str | None:
    """The strict best mean (no tie); None otherwise."""
    values = pd.Series(means, dtype=float).dropna()
    if values.nunique() < 2:
        return None
    pick = values.idxmin() if lower_is_better(metric) else values.idxmax()
    return pick if (values == values[pick]).sum() == 1 else None


def _budget_section(
    frame: pd.DataFrame, full: pd.DataFrame, budget: int, metric: str, root: Path | None
) -> list[str]:
    """Key metrics with 95 % CIs, then the other metrics as mean ± std; the strict best mean of
    each metric among selection methods in bold; full data as the (never bold) reference row."""
    keys = _key_metrics(frame, metric)
    others = [m for m in _metric_columns(frame) if m not in keys]
    rows = frame[frame.budget == budget]
    groups = {name: rows[rows.method == name] for name in dict.fromkeys(rows.method)}
    if len(full):
        groups[FULL_DATA] = full
    est = {(n, m): _estimate(g, m, root) for n, g in groups.items() for m in keys}
    best = {}
    for m in keys + others:
        means = {n: float(g[m].mean()) for n, g in groups.items() if n != FULL_DATA and m in g}
        best[m] = _bold_best(means, m)
    lines = [
        f"## Budget {budget}: mean [95 % CI] over seeds and test samples",
        "",
        "Cells: mean over seeds `[95 % CI]` (two-level bootstrap, see *Against random*); "
        "mean ± std over seeds where there are no per-sample values (`valid_loss`, old runs). "
        "n = test samples. **Bold**: the strict best mean, not a significance claim.",
        "",
        "| method | seeds | n | " + " | ".join(keys) + " | select s | finetune s |",
        "|---|---:|---:|" + "---:|" * (len(keys) + 2),
    ]
    for name, g in groups.items():
        cells = []
        for m in keys:
            text = _ci_cell(est[name, m], g, m)
            cells.append(f"**{text}**" if best[m] == name and name != FULL_DATA else text)
        times = [_cell(g[f"{t}_s"].mean(), g[f"{t}_s"].std(), len(g), 1) for t in _TIMES[:2]]
        head = est[name, metric]
        n = str(head.n_samples) if head is not None and head.has_ci else "–"
        label = (
            name
            if name != FULL_DATA
            else f"{FULL_DATA} ({int(g.budget.iloc[0])} samples, reference)"
        )
        lines.append(f"| {label} | {len(g)} | {n} | " + " | ".join(cells + times) + " |")
    if others:
        lines += ["", f"Other metrics at budget {budget}: mean ± std over seeds", ""]
        lines += ["| method | " + " | ".join(others) + " |", "|---|" + "---:|" * len(others)]
        for name, g in groups.items():
            cells = []
            for m in others:
                text = _cell(float(g[m].mean()), float(g[m].std()), len(g), 4)
                cells.append(f"**{text}**" if best[m] == name and name != FULL_DATA else text)
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


_BOOTSTRAP_TEXT = (
    f"95 % CI: paired two-level bootstrap, {N_BOOT:,} replicates, each resampling the test "
    "samples (one draw shared by every seed and both arms) and the seeds with replacement; with "
    "one seed, over test samples only."
)


def _delta_rows(deltas: Mapping[tuple[str, int], Interval]) -> list[str]:
    """``| method | budget | mean Δ | 95 % CI | n (samples × seeds) | verdict |`` rows."""
    lines = []
    for (name, budget), d in deltas.items():
        ci = f"[{d.low:+.4f}, {d.high:+.4f}]" if d.has_ci else "–"
        n = f"{d.n_samples} × {d.n_seeds}" if d.has_ci else f"– × {d.n_seeds}"
        word = verdict(d) if d.has_ci else "n/a (no per-sample predictions)"
        lines.append(f"| {name} | {budget} | {d.mean:+.4f} | {ci} | {n} | {word} |")
    return lines


def _against_random(table: pd.DataFrame, metric: str, root: Path | None) -> list[str]:
    """The paired comparison to random on ``metric``, per method and budget, with a verdict."""
    deltas = against_random(table, metric, root=root)
    if not deltas:
        return []
    return [
        f"## Against random ({metric}, paired by seed and test sample)",
        "",
        f"Δ = method − random on the same seeds (those both have) and the same test samples "
        f"(by `sample_id`). {_BOOTSTRAP_TEXT} Verdict: *better* / "
        "*worse* only when the CI excludes 0 (lower-is-better metrics flipped), else *no "
        "difference*. The full-data row is the headroom: a coreset method can only show a gain "
        "where fine-tuning on more data does.",
        "",
        "| method | budget | mean Δ | 95 % CI | n (samples × seeds) | verdict |",
        "|---|---:|---:|---|---:|---|",
        *_delta_rows(deltas),
    ]


def _reference_section(table: pd.DataFrame, metric: str, root: Path | None) -> list[str]:
    """``reference − method`` for every other method, at budgets with a method besides the
    reference and random (with random alone it would repeat *Against random*)."""
    chosen, _ = _split(table)
    budgets = {
        b for b, rows in chosen.groupby("budget")
        if REFERENCE in set(rows.method) and set(rows.method) - {REFERENCE, _BASELINE}
    }  # fmt: skip
    deltas = {
        key: d
        for key, d in reference_against(table, metric, root=root).items()
        if key[1] in budgets
    }
    if not deltas:
        return []
    return [
        f"## {REFERENCE} against every method ({metric}, paired by seed and test sample)",
        "",
        f"Δ = {REFERENCE} − method, paired as in *Against random*. {_BOOTSTRAP_TEXT} Verdict "
        f"for {REFERENCE}: *better* when the CI excludes 0 on its side (lower-is-better "
        f"metrics flipped), *worse* on the other, else *no difference*: {REFERENCE} is at "
        "least as good as every method where no row says *worse*.",
        "",
        f"| method | budget | {REFERENCE} − method | 95 % CI | n (samples × seeds) | verdict |",
        "|---|---:|---:|---|---:|---|",
        *_delta_rows(deltas),
    ]


def _headroom_section(table: pd.DataFrame, metric: str, root: Path | None) -> list[str]:
    room = headroom(table, metric, root=root)
    if room is None:
        return []
    lines = [
        f"## Headroom: does more training data help? ({metric})",
        "",
        "`random` at every budget and fine-tuning on all training data, with 95 % CIs. A "
        "selection method can only beat random where more data beats less.",
        "",
        f"| arm | train samples | seeds | n | {metric} |",
        "|---|---:|---:|---:|---:|",
    ]
    rows = [(f"{_BASELINE}@{b}", b, v) for b, v in room.random.items()]
    _, full = _split(table)
    if room.full_data is not None:
        rows.append((FULL_DATA, int(full.budget.iloc[0]), room.full_data))
    for label, size, v in rows:
        n = str(v.n_samples) if v.has_ci else "–"
        lines.append(f"| {label} | {size} | {v.n_seeds} | {n} | {v.format()} |")
    lines += ["", *room.lines()]
    if room.full_data is None:
        lines.append(f"- no `{FULL_DATA}` arms (`bench.full_data: false`): headroom not measured")
    for b in room.absent:
        gap = room.gaps[b]
        lines += [
            "",
            f"**No headroom at budget {b}**: {FULL_DATA} − {_BASELINE}@{b} = "
            f"{gap.format(signed=True)} ({gap.size()}) does not exclude 0 on the better side; "
            "no selection method can show a gain here.",
        ]
    return lines


def results_markdown(
    table: pa.Table,
    *,
    metric: str,
    title: str,
    notes: Sequence[str] = (),
    root: Path | None = None,
    sections: Sequence[str] = (),
    plots: bool = True,
) -> str:
    """``results.md``: the headroom section, one table per budget (key metrics with 95 % CIs,
    best mean in bold, full data as reference), the paired comparison against random on
    ``metric``, then GORACS (:data:`REFERENCE`) against every other method, further
    ``sections`` (markdown lines, e.g. the POO premise), and the plots. ``root``: base of
    relative ``predictions`` paths."""
    frame = table.to_pandas()
    chosen, full = _split(frame)
    lines = [f"# {title}", "", *notes, ""]
    room = _headroom_section(frame, metric, root)
    if room:
        lines += [*room, ""]
    for budget in sorted(set(chosen.budget)):
        lines += [*_budget_section(chosen, full, budget, metric, root), ""]
    for comparison in (
        _against_random(frame, metric, root),
        _reference_section(frame, metric, root),
    ):
        if comparison:
            lines += [*comparison, ""]
    if sections:
        lines += [*sections, ""]
    if plots:
        lines += ["![metric vs budget](metric_vs_budget.png)", "", "![time](time.png)", ""]
    return "\n".join(lines)


def _errors(rows: pd.DataFrame, cis: dict, metric: str) -> tuple[float, float, float, str]:
    """(mean, below, above, kind) of one (method, budget): the 95 % CI where known, else std."""
    ci = cis.get((rows.method.iloc[0], int(rows.budget.iloc[0])))
    if ci is not None and ci.has_ci:
        return ci.mean, ci.mean - ci.low, ci.high - ci.mean, "95 % CI"
    std = float(rows[metric].std()) if len(rows) > 1 else 0.0
    return float(rows[metric].mean()), std, std, "std over seeds"


def _plot(frame: pd.DataFrame, metric: str, out_dir: Path, cis: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    full = frame[frame.method == FULL_DATA]
    chosen = frame[frame.method != FULL_DATA]
    reference = f"{FULL_DATA} ({int(full.budget.iloc[0])})" if len(full) else ""
    methods = list(dict.fromkeys(chosen.method))
    kinds = set()
    if chosen.budget.nunique() == 1:  # one budget: a dot per method, easier to read than lines
        bars = [_errors(chosen[chosen.method == name], cis, metric) for name in methods]
        kinds |= {b[3] for b in bars}
        fig, ax = plt.subplots(figsize=(7, 0.35 * len(bars) + 1.5))
        xerr = np.array([[b[1] for b in bars], [b[2] for b in bars]])
        ax.errorbar([b[0] for b in bars], range(len(bars)), xerr=xerr, fmt="o", capsize=3)
        ax.set_yticks(range(len(bars)), methods)
        ax.invert_yaxis()
        if reference:
            ax.axvline(full[metric].mean(), color="k", linestyle="--", label=reference)
            ax.legend(fontsize="small")
        ax.set_xlabel(f"{metric} (mean over seeds; bars: {' or '.join(sorted(kinds))})")
        ax.set_title(f"{metric} at budget {int(chosen.budget.iloc[0])}")
    else:
        fig, ax = plt.subplots(figsize=(8, 4.5))
        markers = "osD^vPX*<>"
        for i, name in enumerate(methods):
            own = chosen[chosen.method == name]
            budgets = sorted(int(b) for b in own.budget.unique())
            bars = [_errors(own[own.budget == b], cis, metric) for b in budgets]
            kinds |= {b[3] for b in bars}
            yerr = np.array([[b[1] for b in bars], [b[2] for b in bars]])
            ax.errorbar(
                budgets, [b[0] for b in bars], yerr=yerr,
                capsize=3, label=name, marker=markers[i % len(markers)],
                linestyle=("-", "--", ":")[i // len(markers) % 3],
            )  # fmt: skip
        if reference:
            ax.axhline(full[metric].mean(), color="k", linestyle="--", label=reference)
        ax.set_xscale("log", base=2)
        budgets = sorted(int(b) for b in chosen.budget.unique())
        ax.set_xticks(budgets, [str(b) for b in budgets])
        ax.set_xlabel("budget n (training samples kept)")
        ax.set_ylabel(f"{metric} (mean; bars: {' or '.join(sorted(kinds))})")
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


def _relative(table: pa.Table, root: Path) -> pa.Table:
    """``predictions`` paths under ``root`` stored relative to it (the run dir can move)."""
    if "predictions" not in table.column_names:
        return table
    paths = []
    for p in table.column("predictions").to_pylist():
        if p is not None and Path(p).is_absolute() and Path(p).is_relative_to(root.resolve()):
            p = str(Path(p).relative_to(root.resolve()))
        paths.append(p)
    i = table.column_names.index("predictions")
    return table.set_column(i, "predictions", pa.array(paths, pa.string()))


def _can_plot() -> bool:
    """Whether matplotlib (the ``plots`` extra) is installed; warns once per report if not."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is not None:
        return True
    logger.warning("matplotlib is not installed: no plots (pip install 'goracs_ray[plots]')")
    return False


def _poo_plot(traces: Mapping[str, Sequence[float]], out_dir: Path) -> bool:
    """``poo.png``: POO after greedy and after each accepted exchange, per arm with a trace."""
    traced = {name: list(t) for name, t in traces.items() if len(t)}
    if not traced:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, trace in traced.items():
        ax.plot(range(len(trace)), trace, marker=".", label=name)
    ax.set_xlabel("accepted exchanges (0 = after greedy)")
    ax.set_ylabel("POO (lower is better)")
    ax.set_title("ITRA: POO descent")
    ax.legend(fontsize="small")
    fig.tight_layout()
    with atomic_file(out_dir / "poo.png") as part:
        fig.savefig(part, format="png", dpi=110)
    plt.close(fig)
    return True


def write_results(
    out_dir: Path,
    table: pa.Table,
    *,
    metric: str,
    title: str | None = None,
    notes: Sequence[str] = (),
    sections: Sequence[str] = (),
    poo_traces: Mapping[str, Sequence[float]] | None = None,
) -> Path:
    """Write ``results.parquet`` (predictions paths relative to ``out_dir``), ``results.md``,
    ``metric_vs_budget.png``, ``time.png`` and, given ``poo_traces`` (arm label → POO after
    greedy and each accepted exchange), ``poo.png``. Returns the ``results.md`` path."""
    out_dir = Path(out_dir)
    if metric not in table.column_names:
        raise ValueError(
            f"`bench.metric` {metric!r} is not among the evaluated metrics "
            f"{[c for c in table.column_names if '@' in c or c in ('auc', 'log_loss')]}"
        )
    stored = _relative(table, out_dir)
    write_parquet(out_dir / "results.parquet", stored)
    cis = method_intervals(stored, metric, root=out_dir)
    plots = _can_plot()
    if plots:
        _plot(stored.to_pandas(), metric, out_dir, cis)
    extra = list(sections)
    if plots and _poo_plot(poo_traces or {}, out_dir):
        extra += ["![POO descent](poo.png)", ""]
    text = results_markdown(
        stored,
        metric=metric,
        title=title or f"goracs bench: {out_dir.name}",
        notes=notes,
        root=out_dir,
        sections=extra,
        plots=plots,
    )
    with atomic_file(out_dir / "results.md") as part:
        part.write_text(text)
    return out_dir / "results.md"


def log_headroom(room: Headroom | None) -> None:
    """Log the headroom lines (INFO) and a WARNING per budget where full data is not better."""
    if room is None:
        return
    for line in room.lines():
        logger.info("bench %s", line.removeprefix("- "))
    for b in room.absent:
        logger.warning(
            "no headroom at budget %d: %s − random = %s (%s); no selection method can show a gain",
            b,
            FULL_DATA,
            room.gaps[b].format(signed=True),
            room.gaps[b].size(),
        )
