"""goracs_ray.stats: per-sample metrics, two-level bootstrap CIs, paired comparisons, verdicts."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from goracs_ray.evaluate import metrics
from goracs_ray.stats import (
    Interval,
    SampleValues,
    _per_seed_stats,
    _sample_counts,
    bootstrap_ci,
    describe,
    paired_bootstrap,
    sample_values,
    verdict,
)


def _ids(n: int) -> np.ndarray:
    return np.array([f"u{i:05d}" for i in range(n)], dtype=object)


def _mean_arm(values: np.ndarray, metric: str = "test_loss") -> SampleValues:
    return SampleValues(metric, _ids(len(values)), np.asarray(values, dtype=np.float64))


def test_per_sample_values_reproduce_the_evaluation_metrics():
    rng = np.random.default_rng(0)
    rank = rng.integers(0, 100, 50)
    seq = pa.table({"sample_id": _ids(50), "rank": rank, "generated": ["t"] * 50})
    for k in (1, 5, 10):
        np.testing.assert_allclose(
            sample_values(seq, f"ndcg@{k}").values.mean(), metrics.ndcg_at_k(rank, k)
        )
        np.testing.assert_allclose(
            sample_values(seq, f"hr@{k}").values.mean(), metrics.hit_rate_at_k(rank, k)
        )
    np.testing.assert_allclose(sample_values(seq, "mean_rank").values.mean(), rank.mean())
    # absent columns and non-per-sample metrics: no values (the writers show no CI)
    for name in ("test_loss", "grounded_ndcg@10", "valid_loss", "auc"):
        assert sample_values(seq, name) is None
    p, y = rng.random(60), rng.integers(0, 2, 60)
    p[:3] = [0.0, 1.0, 0.5]
    ctr = {"sample_id": _ids(60), "p_yes": p, "label": y}
    np.testing.assert_allclose(sample_values(ctr, "log_loss").values.mean(), metrics.log_loss(y, p))
    np.testing.assert_allclose(
        sample_values(ctr, "accuracy").values.mean(), ((p > 0.5) == y).mean()
    )
    with pytest.raises(ValueError, match="repeat a `sample_id`"):
        sample_values({"sample_id": np.array(["a", "a"]), "rank": np.array([0, 1])}, "hr@1")


def test_auc_bootstrap_equals_metrics_auc_on_the_identity_and_on_an_expanded_resample():
    rng = np.random.default_rng(1)
    y, p = rng.integers(0, 2, 80), np.round(rng.random(80), 1)  # many ties
    sv = sample_values({"sample_id": _ids(80), "p_yes": p, "label": y}, "auc")
    ci = bootstrap_ci({0: sv}, n_boot=500)
    np.testing.assert_allclose(ci.mean, metrics.auc(y, p))
    assert ci.low < ci.mean < ci.high
    counts = _sample_counts(80, 5, 0)
    got = _per_seed_stats("auc", sv.values[None], counts)[0]
    for b in range(5):
        idx = np.repeat(np.arange(80), counts[b].astype(int))
        np.testing.assert_allclose(got[b], metrics.auc(y[idx], p[idx]))


def test_mean_replicates_equal_the_mean_of_the_expanded_resample():
    values = np.random.default_rng(2).random((3, 40))
    counts = _sample_counts(40, 4, 7)
    got = _per_seed_stats("test_loss", values, counts)
    for b in range(4):
        idx = np.repeat(np.arange(40), counts[b].astype(int))
        np.testing.assert_allclose(got[:, b], values[:, idx].mean(axis=1))


def test_bootstrap_ci_covers_the_true_mean_at_about_the_nominal_rate():
    """200 synthetic test sets of 100 samples, 1,000 replicates each: the 95 % CI must cover the
    true mean ≥ 90 % of the time (binomial sd of the rate ≈ 1.5 %) and be deterministic."""
    rng = np.random.default_rng(3)
    covered = 0
    for i in range(200):
        ci = bootstrap_ci({0: _mean_arm(rng.exponential(0.5, 100))}, n_boot=1000, seed=i)
        covered += ci.low <= 0.5 <= ci.high
    assert covered / 200 >= 0.90
    arm = {0: _mean_arm(rng.random(30))}
    assert bootstrap_ci(arm, seed=5) == bootstrap_ci(arm, seed=5)
    assert bootstrap_ci(arm, seed=5).samples_only
    assert "over test samples only" in bootstrap_ci(arm).size()


def _seeded(base: np.ndarray, shift: float, rng) -> dict[int, SampleValues]:
    """3 seeds: the shared per-sample difficulty ``base`` + seed noise + ``shift``."""
    return {s: _mean_arm(base + shift + rng.normal(0, 0.3, base.size), "ndcg@10") for s in range(3)}


def test_paired_bootstrap_detects_a_known_shift_and_not_a_zero_one():
    rng = np.random.default_rng(4)
    base = rng.normal(0, 1.0, 500)  # large between-sample spread, cancelled by pairing
    random = _seeded(base, 0.0, rng)
    up = paired_bootstrap(_seeded(base, 0.1, rng), random)
    assert (up.n_samples, up.n_seeds) == (500, 3)
    assert up.low > 0
    assert verdict(up) == "better"
    np.testing.assert_allclose(up.mean, 0.1, atol=0.03)
    same = paired_bootstrap(_seeded(base, 0.0, rng), random)
    assert same.low < 0 < same.high
    assert verdict(same) == "no difference"
    # seeds are paired by value: only the common ones count
    partial = paired_bootstrap({s: v for s, v in _seeded(base, 0.1, rng).items() if s}, random)
    assert partial.n_seeds == 2
    with pytest.raises(ValueError, match="no common seed"):
        paired_bootstrap({9: random[0]}, random)


def test_pairing_is_by_sample_id_and_mismatched_sets_are_refused():
    rng = np.random.default_rng(5)
    a, b = _mean_arm(rng.random(50)), _mean_arm(rng.random(50))
    order = rng.permutation(50)
    shuffled = SampleValues(b.metric, b.sample_id[order], b.values[order])
    assert paired_bootstrap({0: a}, {0: b}) == paired_bootstrap({0: a}, {0: shuffled})
    assert bootstrap_ci({0: b}) == bootstrap_ci({0: shuffled})
    other = SampleValues(b.metric, _ids(51)[1:], b.values)
    with pytest.raises(ValueError, match="cannot pair `test_loss` by `sample_id`"):
        paired_bootstrap({0: a}, {0: other})
    with pytest.raises(ValueError, match="seed 1 has 49 test samples"):
        bootstrap_ci({0: a, 1: SampleValues(a.metric, a.sample_id[1:], a.values[1:])})


def test_verdicts_respect_lower_is_better_metrics():
    def delta(metric, low, high):
        return Interval(metric, (low + high) / 2, low, high, 100, 3)

    assert verdict(delta("ndcg@10", 0.01, 0.03)) == "better"
    assert verdict(delta("ndcg@10", -0.03, -0.01)) == "worse"
    assert verdict(delta("log_loss", -0.03, -0.01)) == "better"  # a lower loss is better
    assert verdict(delta("mean_rank", 0.5, 2.0)) == "worse"
    assert verdict(delta("test_loss", -0.01, 0.02)) == "no difference"
    nan = float("nan")
    assert verdict(Interval("auc", 0.01, nan, nan, 0, 3)) == "n/a"
    line = describe("goracs", "random", delta("ndcg@10", 0.01, 0.03))
    assert line == "goracs − random (ndcg@10): +0.0200 [+0.0100, +0.0300] (n=100 × 3 seeds): better"


def test_run_report_shows_the_headline_ci_and_a_paired_line_per_method(tmp_path):
    """`goracs run` reports through the bench reporter: one seed, CIs over test samples."""
    from goracs_ray.io import write_parquet
    from goracs_ray.results import ArmResult, results_table, write_results

    rng = np.random.default_rng(6)
    hard = rng.integers(0, 30, 200)
    arms = []
    for method, rank in (("goracs", np.maximum(hard - 8, 0)), ("random", hard), ("grand", hard)):
        path = tmp_path / method / "predictions.parquet"
        write_parquet(path, pa.table({"sample_id": _ids(200), "rank": rank}))
        ndcg = metrics.ndcg_at_k(rank, 10)
        times = {"select": 1.0, "finetune": 2.0, "evaluate": 3.0}
        trace = [0.5, 0.4] if method == "goracs" else ()
        arms.append(
            ArmResult(method, 16, 0, {"ndcg@10": ndcg}, times, trace, predictions=str(path))
        )
    arms.append(ArmResult("old", 16, 0, {"ndcg@10": 0.1}, {}))  # no predictions: no CI
    text = write_results(
        tmp_path,
        results_table(arms),
        metric="ndcg@10",
        title="t",
        poo_traces={arm.method: arm.poo_trace for arm in arms},
    ).read_text()
    table = pa.table({"sample_id": _ids(200), "rank": np.maximum(hard - 8, 0)})
    expected = bootstrap_ci({0: sample_values(table, "ndcg@10")}).format()
    row = next(line for line in text.splitlines() if line.startswith("| goracs | 1 |"))
    assert row.startswith(f"| goracs | 1 | 200 | **{expected}** |")
    assert "| old | 1 | – | 0.1000 |" in text
    lines = [
        line for line in text.splitlines() if line.startswith(("| goracs | 16", "| grand | 16"))
    ]
    assert lines[0].endswith("| 200 × 1 | better |")
    assert lines[1].endswith("| 200 × 1 | no difference |")
    assert "| old | 16 | -0.0377 | – | – × 1 | n/a (no per-sample predictions) |" in text
    assert (tmp_path / "poo.png").stat().st_size > 0
    assert (tmp_path / "metric_vs_budget.png").stat().st_size > 0


def test_reports_without_matplotlib_skip_the_plots(tmp_path, monkeypatch, caplog):
    import importlib.util
    import logging

    from goracs_ray.results import ArmResult, results_table, write_results

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name)
    )
    arms = [ArmResult(m, 16, 0, {"ndcg@10": v}, {}) for m, v in (("goracs", 0.2), ("random", 0.1))]
    with caplog.at_level(logging.WARNING):
        text = write_results(tmp_path, results_table(arms), metric="ndcg@10").read_text()
    assert "goracs_ray[plots]" in caplog.text
    assert "png" not in text
    assert not list(tmp_path.glob("*.png"))
    assert (tmp_path / "results.parquet").is_file()
