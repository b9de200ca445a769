"""Per-sample gradient norms: vectorised (hooks, vmap) vs the per-sample backward loop.

Same model, same samples, same torch thread count (``--threads``, default 1), one run; the process
reuses freed memory (``features.compute.keep_freed_memory``, as ``goracs features`` actors do) for
every path. Model: the
default tiny LLaMA (``DEFAULT_TINY``: vocab ≈ 0.8–1k BPE, hidden 64, 2 layers, 4 heads, MLP 128;
≈ 0.18 M parameters, printed as ``model_params``) with a fresh LoRA (r 8, q_proj/v_proj, lora_B
seeded non-zero so every gradient is informative); only the target is trainable, as in the
reference (METHOD.md §6). Samples: synthetic SeqRec (or CTR) prompts, 256 tokens max (≈ 160
tokens each, as real ml-100k prompts with this tokenizer: ≈ 170), batched as ``goracs features``
batches them: sorted by length, ``--batch-tokens`` padded tokens per batch
(``features.compute.token_batches``).

Loop baselines (the reference practice, METHOD.md §6), both measured; the faster one is the
denominator of the headline speed-up:

``loop_per_sample``
    For each sample, unpadded: full HF forward (logits at every position), per-sample causal-LM
    loss, one ``autograd.grad`` of the target matrix (``per_sample_grads(method="loop")``).
``loop_batch_forward``
    One padded batch forward of 64 samples, then per sample ``autograd.grad(loss_i, target,
    retain_graph=True)`` (each backward walks the whole batch's graph, so it is timed once).

Vectorised paths: ``hooks`` (the default: hooks on the stock HF forward, public APIs only, the
prompt prefix shared through the KV cache), ``fused`` (opt-in: the LLaMA-layout forward that skips
what the gradients do not need, verified against ``hooks`` on a run's first batch), ``hooks_hf``
(the hooks on one plain HF forward, no shared prefix) and ``vmap``. ``hooks`` and ``fused`` are
also timed with ``with_hidden`` (final hidden states for LLM embeddings, as ``goracs features``
asks), and ``hooks`` with the gradients projected to ``--proj-dim`` (``features.proj_dim``, read by
the LESS baseline only): ``projection_overhead_ratio`` is the time with the projection over
without. Prints `name: value` lines; the headline (the default ``hooks`` vs the faster loop) last.
Usage: python benchmarks/bench_grads.py [--quick] [--target all_lora] [--task ctr]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from goracs_ray.data.prompts import format_full_text, format_prompt
from goracs_ray.features.compute import keep_freed_memory, token_batches
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.features.grads import per_sample_grads
from goracs_ray.features.projection import GradProjector
from goracs_ray.models.config import DEFAULT_TINY
from goracs_ray.models.lm import LoraSettings, load_causal_lm, target_parameter_names
from goracs_ray.models.losses import causal_lm_loss, ctr_loss, ctr_token_ids
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.text import tokenize_samples
from goracs_ray.models.tiny import build_tiny_llm


def _rate(fn, batches, repeats: int, min_seconds: float = 0.0) -> tuple[float, float, np.ndarray]:
    """(samples per wall second, samples per CPU second, norms): the best of ``repeats`` or more
    passes, as many as fit in ``min_seconds`` (timeit-style: a fast path gets as many chances
    to show its undisturbed time as a slow one)."""
    fn(batches[0])  # warm-up
    best_wall, best_cpu, passes, spent = float("inf"), float("inf"), 0, 0.0
    while passes < repeats or spent < min_seconds:
        wall, cpu = time.perf_counter(), time.process_time()
        norms = [fn(b) for b in batches]
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        best_wall, best_cpu = min(best_wall, wall), min(best_cpu, cpu)
        passes, spent = passes + 1, spent + wall
    n = sum(b["input_ids"].shape[0] for b in batches)
    return n / best_wall, n / best_cpu, np.concatenate(norms)


def _loop_batch_forward(model, batch, names, task, token_ids) -> np.ndarray:
    """Reference variant: one batch forward, one retained-graph backward per sample."""
    named = dict(model.named_parameters())
    params = [named[n] for n in names]
    with torch.enable_grad():
        ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
        logits = model(input_ids=ids, attention_mask=mask).logits
        if task == "ctr":
            losses = ctr_loss(logits, labels, token_ids)
        else:
            losses = causal_lm_loss(logits, labels)
        norms = []
        for i in range(ids.shape[0]):
            gs = torch.autograd.grad(losses[i], params, retain_graph=True)
            norms.append(float(torch.cat([g.flatten() for g in gs]).norm()))
    return np.asarray(norms, dtype=np.float32)


def _build(args, n):
    rows = synthetic_samples(n, task=args.task, seed=0).to_pylist()
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    outputs = [r["output"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        texts = [format_full_text(r["instruction"], r["input"], r["output"]) for r in rows]
        sizes = {k: v for k, v in vars(DEFAULT_TINY).items() if k != "pretrain_steps"}
        path = build_tiny_llm(texts, f"{tmp}/tiny", **sizes)
        lora = LoraSettings()
        # vmap needs eager attention; the loops and hooks share the faster sdpa model
        eager, tok = load_causal_lm(path, lora=lora, attn_implementation="eager")
        fast, _ = load_causal_lm(path, lora=lora, attn_implementation="sdpa")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in fast.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    eager.load_state_dict(fast.state_dict())
    for model in (eager, fast):
        for name, p in model.named_parameters():
            p.requires_grad_(name in target_parameter_names(model, args.target))
    lengths = tokenize_samples(tok, prompts, outputs, max_length=args.max_length)["attention_mask"]
    batches = []
    for rows in token_batches(lengths.sum(1).tolist(), args.batch_tokens):
        texts = [prompts[i] for i in rows], [outputs[i] for i in rows]
        batches.append(tokenize_samples(tok, *texts, max_length=args.max_length))
    return eager, fast, tok, batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 samples, one pass (< 1 min)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument(
        "--batch-tokens",
        type=int,
        default=FeaturesConfig.batch_tokens,
        help="padded tokens per batch (the `goracs features` default)",
    )
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sample")
    parser.add_argument("--task", default="seqrec", choices=["seqrec", "ctr"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (all paths)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes at least (best kept)")
    parser.add_argument(
        "--min-seconds", type=float, default=3.0, help="time each path at least this long"
    )
    parser.add_argument("--target", default="last_v_lora_b", choices=["last_v_lora_b", "all_lora"])
    parser.add_argument(
        "--proj-dim", type=int, default=512, help="k of the timed gradient projection (LESS)"
    )
    args = parser.parse_args()
    n, repeats, min_seconds = (
        (64, 1, 0.0) if args.quick else (args.samples, args.repeats, args.min_seconds)
    )
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    eager, fast, tok, batches = _build(args, n)
    names = target_parameter_names(fast, args.target)
    token_ids = ctr_token_ids(tok)

    def run(net, method, **kw):
        def fn(b):
            res = per_sample_grads(
                net, b, names, task=args.task, method=method, token_ids=token_ids, **kw
            )
            return res.norms.numpy()

        return _rate(fn, batches, repeats, min_seconds)

    loop, loop_cpu, ref = run(fast, "loop")
    loop_bf, loop_bf_cpu, got_bf = _rate(
        lambda b: _loop_batch_forward(fast, b, names, args.task, token_ids),
        [{key: t[:64] for key, t in batches[0].items()}],
        1,
    )
    vmap, _, got_v = run(eager, "vmap")
    hooks_hf, _, got_hf = run(fast, "hooks_hf")
    fused_emb, _, _ = run(fast, "fused", with_hidden=True)
    fused, fused_cpu, got_f = run(fast, "fused")
    hooks_emb, _, _ = run(fast, "hooks", with_hidden=True)
    hooks, hooks_cpu, got_h = run(fast, "hooks")
    grad_dim = sum(dict(fast.named_parameters())[k].numel() for k in names)
    projector = GradProjector(grad_dim, args.proj_dim, seed=0)

    def hooks_projected(b):
        res = per_sample_grads(fast, b, names, task=args.task, method="hooks", token_ids=token_ids)
        return projector(res.grads).norm(dim=1).numpy()

    hooks_proj, _, _ = _rate(hooks_projected, batches, repeats, min_seconds)
    best, best_cpu, best_name = max(
        (loop, loop_cpu, "loop_per_sample"), (loop_bf, loop_bf_cpu, "loop_batch_forward")
    )
    n_params = sum(p.numel() for p in fast.parameters())
    tokens = float(np.mean([b["attention_mask"].sum(1).float().mean() for b in batches]))
    print(f"model_params: {n_params}")
    print(f"grad_params: {sum(dict(fast.named_parameters())[k].numel() for k in names)}")
    print(f"samples: {n}")
    print(f"threads: {args.threads}")
    print(f"batches: {len(batches)}")
    print(f"mean_tokens_per_sample: {tokens:.1f}")
    for name, got in (
        ("loop_batch_forward", got_bf),
        ("vmap", got_v),
        ("hooks_hf", got_hf),
        ("fused", got_f),
        ("hooks", got_h),
    ):
        print(f"max_rel_err_{name}: {np.max(np.abs(got - ref[: len(got)]) / ref[: len(got)]):.2e}")
    print(f"loop_per_sample_samples_per_s: {loop:.1f}")
    print(f"loop_batch_forward_samples_per_s: {loop_bf:.1f}")
    print(f"vmap_samples_per_s: {vmap:.1f}")
    print(f"hooks_hf_samples_per_s: {hooks_hf:.1f}")
    print(f"fused_with_hidden_samples_per_s: {fused_emb:.1f}")
    print(f"fused_samples_per_s: {fused:.1f}")
    print(f"hooks_with_hidden_samples_per_s: {hooks_emb:.1f}")
    print(f"hooks_samples_per_s: {hooks:.1f}")
    print(f"proj_dim: {args.proj_dim}")
    print(f"grad_proj_bytes_per_sample: {args.proj_dim * 4}")
    print(f"hooks_projected_samples_per_s: {hooks_proj:.1f}")
    print(f"projection_overhead_ratio: {hooks / hooks_proj:.2f}")  # time with / without
    print(f"loop_baseline: {best_name}")
    print(f"fused_speedup_cpu_time: {fused_cpu / best_cpu:.1f}")
    print(f"hooks_speedup_cpu_time: {hooks_cpu / best_cpu:.1f}")
    print(f"vmap_speedup: {vmap / best:.1f}")
    print(f"hooks_hf_speedup: {hooks_hf / best:.1f}")
    print(f"fused_with_hidden_speedup: {fused_emb / best:.1f}")
    print(f"fused_speedup: {fused / best:.1f}")
    print(f"hooks_with_hidden_speedup: {hooks_emb / best:.1f}")
    print(f"hooks_speedup: {hooks / best:.1f}")


if __name__ == "__main__":
    main()
