"""Likelihood ranking of SeqRec candidates: KV-cached prefix vs one full forward per candidate.

Same model, same samples, same torch thread count (``--threads``, default 1), same candidate
chunks (``--candidate-batch``, the ``evaluate.candidate_batch`` default). Model: the default tiny
LLaMA (``DEFAULT_TINY``: vocab ≈ 1k BPE trained on the synthetic prompts and titles, hidden 64,
2 layers; printed as ``model_params``) loaded as ``goracs evaluate`` loads it (eager attention),
with a LoRA adapter whose lora_B is seeded non-zero (a fine-tuned model is a peft model).
Samples: synthetic SeqRec prompts with 10 history titles (≈ 170 tokens, like ml-100k), each with
1 target + ``--negatives`` random catalog titles as candidates, formatted like the training
``output`` (``seqrec_output``).

``full_forward``
    The reference: bos + prompt + answer + eos per candidate, right-padded, ``candidate_batch``
    rows per HF forward, per-row causal-LM loss (``candidate_scores(use_cache=False)``).
``cached``
    The prompt once, its KV cache expanded to ``candidate_batch`` rows, only the answers fed
    (``candidate_scores``, the ``goracs evaluate`` path).

Each path: best of ``--repeats`` passes (≥ 3) over all samples, at least ``--min-seconds`` of
timing. Prints `name: value` lines; the headline (cached vs full forward) last.
Usage: python benchmarks/bench_eval.py [--quick] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from goracs_ray.data.prompts import format_full_text, format_prompt
from goracs_ray.data.samples import seqrec_output
from goracs_ray.evaluate.config import EvalConfig
from goracs_ray.evaluate.likelihood import candidate_scores
from goracs_ray.models.config import DEFAULT_TINY
from goracs_ray.models.lm import LoraSettings, load_causal_lm
from goracs_ray.models.synthetic import synthetic_samples, synthetic_titles
from goracs_ray.models.tiny import build_tiny_llm

N_ITEMS = 1682  # ml-100k's catalog


def _rate(fn, n: int, repeats: int, min_seconds: float) -> tuple[float, np.ndarray]:
    """(samples per wall second, scores): the best of ``repeats`` or more passes (timeit-style)."""
    fn()  # warm-up
    best, passes, spent = float("inf"), 0, 0.0
    while passes < repeats or spent < min_seconds:
        wall = time.perf_counter()
        scores = fn()
        wall = time.perf_counter() - wall
        best, passes, spent = min(best, wall), passes + 1, spent + wall
    return n / best, scores


def _build(args, n: int):
    rows = synthetic_samples(n, task="seqrec", split="test", seed=0, n_items=N_ITEMS).to_pylist()
    titles = synthetic_titles(N_ITEMS, seed=0)
    train = synthetic_samples(200, task="seqrec", seed=1, n_items=N_ITEMS).to_pylist()
    texts = [format_full_text(r["instruction"], r["input"], r["output"]) for r in train] + titles
    with tempfile.TemporaryDirectory() as tmp:
        sizes = {k: v for k, v in vars(DEFAULT_TINY).items() if k != "pretrain_steps"}
        path = build_tiny_llm(texts, f"{tmp}/tiny", seed=0, **sizes)
        model, tok = load_causal_lm(
            path, lora=LoraSettings(), attn_implementation=args.attn, trainable=None
        )
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    model.eval()
    rng = np.random.default_rng(0)
    index = {t: i for i, t in enumerate(titles)}
    prompts, cands = [], []
    for r in rows:
        target = index[r["target_title"]]
        pool = np.setdiff1d(np.arange(N_ITEMS), [target])
        negs = rng.choice(pool, size=args.negatives, replace=False)
        prompts.append(format_prompt(r["instruction"], r["input"]))
        cands.append([seqrec_output(titles[j]) for j in [target, *negs]])
    return model, tok, prompts, cands


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 samples, 3 passes (< 1 min)")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--negatives", type=int, default=99, help="candidates = 1 + negatives")
    parser.add_argument("--candidate-batch", type=int, default=EvalConfig.candidate_batch)
    parser.add_argument("--max-length", type=int, default=EvalConfig.max_length)
    parser.add_argument("--attn", default="eager", choices=["eager", "sdpa"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both paths)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes at least (best kept)")
    parser.add_argument(
        "--min-seconds", type=float, default=3.0, help="time each path at least this long"
    )
    args = parser.parse_args()
    n, min_seconds = (4, 0.0) if args.quick else (args.samples, args.min_seconds)
    repeats = max(3, args.repeats)
    torch.set_num_threads(args.threads)
    model, tok, prompts, cands = _build(args, n)

    def run(use_cache: bool):
        return lambda: candidate_scores(
            model,
            tok,
            prompts,
            cands,
            max_length=args.max_length,
            candidate_batch=args.candidate_batch,
            use_cache=use_cache,
        )

    full, ref = _rate(run(False), n, repeats, min_seconds)
    cached, got = _rate(run(True), n, repeats, min_seconds)
    prompt_tokens = np.mean([len(tok.encode(p)) for p in prompts])
    answer_tokens = np.mean([len(tok.encode(c, add_special_tokens=False)) + 1 for c in cands[0]])
    print(f"model_params: {sum(p.numel() for p in model.parameters())}")
    print(f"samples: {n}")
    print(f"candidates_per_sample: {len(cands[0])}")
    print(f"candidate_batch: {args.candidate_batch}")
    print(f"threads: {args.threads}")
    print(f"attn: {args.attn}")
    print(f"mean_prompt_tokens: {prompt_tokens:.1f}")
    print(f"mean_answer_tokens: {answer_tokens:.1f}")
    print(f"full_forward_samples_per_s: {full:.2f}")
    print(f"cached_samples_per_s: {cached:.2f}")
    print(f"max_abs_score_diff: {np.abs(got - ref).max():.2e}")
    print(f"likelihood_speedup: {cached / full:.1f}")


if __name__ == "__main__":
    main()
