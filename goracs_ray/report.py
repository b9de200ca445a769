"""Human-readable run report: metrics table, timings and PNG plots (POO descent, metrics).

Confidence intervals and the paired comparison to ``random`` come from :mod:`goracs_ray.stats`
(one seed per arm here: the bootstrap is over test samples only).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from goracs_ray.io import atomic_file

__all__ = ["ArmResult", "lower_is_better", "metric_order", "write_report"]


@dataclasses.dataclass(frozen=True)
class ArmResult:
    """One selection method's outcome in a run (select → finetune → evaluate)."""

    method: str
    """Selection method name (registry)."""
    budget: int
    """Coreset size n."""
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


_BASELINE = "random"


def _headline(arms: Sequence[ArmResult]) -> str:
    return "auc" if any("auc" in arm.metrics for arm in arms) else "ndcg@10"


def _interval(arm: ArmResult, metric: str):
    """The arm's 95 % CI of ``metric`` over its test samples, or None without predictions."""
    from goracs_ray.stats import bootstrap_ci, read_values

    values = read_values({0: arm.predictions}, metric)
    return bootstrap_ci(values) if values else None


def _against_random(arms: Sequence[ArmResult], metric: str) -> list[str]:
    """One paired line per method: method − random over the same test samples."""
    from goracs_ray.stats import describe, paired_bootstrap, read_values

    base = next((arm for arm in arms if arm.method == _BASELINE), None)
    if base is None:
        return []
    ref = read_values({0: base.predictions}, metric)
    lines = []
    for arm in arms:
        own = read_values({0: arm.predictions}, metric) if arm is not base else {}
        if own and ref:
            lines.append(f"- {describe(arm.method, _BASELINE, paired_bootstrap(own, ref))}")
        elif arm is not base and metric in arm.metrics and metric in base.metrics:
            diff = arm.metrics[metric] - base.metrics[metric]
            lines.append(f"- {arm.method} − {_BASELINE} ({metric}): {diff:+.4f} (no CI: no "
                         "per-sample predictions)")  # fmt: skip
    if not lines:
        return []
    return [
        f"## Against random ({metric}, paired by test sample)",
        "",
        "95 % CI of method − random by a paired bootstrap over the test samples (one seed: the "
        "seed-to-seed noise is not included). *better* / *worse* only when the CI excludes 0.",
        "",
        *lines,
        "",
    ]


def _metrics_table(arms: Sequence[ArmResult], cis: dict) -> list[str]:
    names = sorted({k for arm in arms for k in arm.metrics}, key=metric_order)
    best = {}
    for name in names:
        values = [arm.metrics[name] for arm in arms if name in arm.metrics]
        if len(set(values)) > 1:  # bold only a strict winner
            best[name] = min(values) if lower_is_better(name) else max(values)
    headline = _headline(arms)
    lines = [
        f"| method | budget | seed | n | {headline} [95 % CI] | " + " | ".join(names) + " |",
        "|---|---:|---:|---:|---:|" + "---:|" * len(names),
    ]
    for i, arm in enumerate(arms):
        ci = cis.get((i, headline))
        cells = [str(ci.n_samples), ci.format()] if ci is not None else ["–", "–"]
        for name in names:
            value = arm.metrics.get(name)
            text = "–" if value is None else f"{value:.4f}"
            cells.append(f"**{text}**" if value is not None and value == best.get(name) else text)
        lines.append(f"| {arm.method} | {arm.budget} | {arm.seed} | " + " | ".join(cells) + " |")
    return lines


def lower_is_better(name: str) -> bool:
    """True for losses (``test_loss``, ``log_loss``) and mean ranks (``*mean_rank``)."""
    return "loss" in name or name.endswith("mean_rank")


def metric_order(name: str) -> tuple[str, int]:
    base, _, k = name.partition("@")
    return (base, int(k) if k.isdigit() else 0)


def _plot(arms: Sequence[ArmResult], out_dir: Path, cis: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images = []
    traced = [arm for arm in arms if len(arm.poo_trace) > 0]
    if traced:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for arm in traced:
            ax.plot(range(len(arm.poo_trace)), arm.poo_trace, marker=".", label=arm.method)
        ax.set_xlabel("accepted exchanges (0 = after greedy)")
        ax.set_ylabel("POO (lower is better)")
        ax.set_title("ITRA: POO descent")
        ax.legend()
        fig.tight_layout()
        with atomic_file(out_dir / "poo.png") as part:
            fig.savefig(part, format="png", dpi=110)
        plt.close(fig)
        images.append("poo.png")
    names = sorted(
        {k for arm in arms for k in arm.metrics if not lower_is_better(k)}, key=metric_order
    )
    if names:
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.9), 3.5))
        width = 0.8 / len(arms)
        for i, arm in enumerate(arms):
            xs = [j + i * width for j in range(len(names))]
            heights = [arm.metrics.get(n, 0.0) for n in names]
            found = [cis.get((i, n)) for n in names]
            err = [
                [h - c.low if c else 0.0 for h, c in zip(heights, found, strict=True)],
                [c.high - h if c else 0.0 for h, c in zip(heights, found, strict=True)],
            ]
            ax.bar(xs, heights, width, label=arm.method, yerr=err if any(found) else None,
                   capsize=2)  # fmt: skip
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30)
        bars = " (error bars: 95 % CI over test samples)" if cis else ""
        ax.set_title(f"Test metrics by selection method{bars}")
        ax.legend()
        fig.tight_layout()
        with atomic_file(out_dir / "metrics.png") as part:
            fig.savefig(part, format="png", dpi=110)
        plt.close(fig)
        images.append("metrics.png")
    return images


def write_report(
    out_dir: Path, arms: Sequence[ArmResult], *, title: str, notes: Sequence[str] = ()
) -> Path:
    """Write ``report.md`` (+ ``poo.png``, ``metrics.png``) into ``out_dir``; returns its path."""
    out_dir = Path(out_dir)
    plotted = {k for arm in arms for k in arm.metrics if not lower_is_better(k)}
    cis = {}
    for i, arm in enumerate(arms):
        for name in plotted | {_headline(arms)}:
            ci = _interval(arm, name)
            if ci is not None:
                cis[i, name] = ci
    images = _plot(arms, out_dir, cis)
    lines = [f"# {title}", "", *notes, "", "## Test metrics", "", *_metrics_table(arms, cis), ""]
    lines += _against_random(arms, _headline(arms))
    lines += ["## Time per stage (s)", "", "| method | select | finetune | evaluate |"]
    lines += ["|---|---:|---:|---:|"]
    for arm in arms:
        s = arm.seconds
        lines.append(
            f"| {arm.method} | {s.get('select', 0):.1f} | {s.get('finetune', 0):.1f} "
            f"| {s.get('evaluate', 0):.1f} |"
        )
    lines.append("")
    lines += [f"![{name}]({name})" for name in images]
    with atomic_file(out_dir / "report.md") as part:
        part.write_text("\n".join(lines) + "\n")
    return out_dir / "report.md"
