"""Human-readable run report: metrics table, timings and PNG plots (POO descent, metrics)."""

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


def _metrics_table(arms: Sequence[ArmResult]) -> list[str]:
    names = sorted({k for arm in arms for k in arm.metrics}, key=metric_order)
    best = {}
    for name in names:
        values = [arm.metrics[name] for arm in arms if name in arm.metrics]
        if len(set(values)) > 1:  # bold only a strict winner
            best[name] = min(values) if lower_is_better(name) else max(values)
    lines = [
        "| method | budget | seed | " + " | ".join(names) + " |",
        "|---|---:|---:|" + "---:|" * len(names),
    ]
    for arm in arms:
        cells = []
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


def _plot(arms: Sequence[ArmResult], out_dir: Path) -> list[str]:
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
            ax.bar(xs, [arm.metrics.get(n, 0.0) for n in names], width, label=arm.method)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(names))], names, rotation=30)
        ax.set_title("Test metrics by selection method")
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
    images = _plot(arms, out_dir)
    lines = [f"# {title}", "", *notes, "", "## Test metrics", "", *_metrics_table(arms), ""]
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
