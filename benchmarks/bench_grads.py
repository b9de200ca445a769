"""Per-sample gradient norms: vectorised (hooks, vmap) vs the per-sample backward loop.

Same model, same samples, one run. Prints `name: value` lines; the headline (vectorised hooks vs
loop speed-up) last. Usage: python benchmarks/bench_grads.py [--quick] [--target all_lora]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch

from goracs_ray.data.prompts import format_full_text, format_prompt
from goracs_ray.features.config import DEFAULT_TINY
from goracs_ray.features.grads import per_sample_grads
from goracs_ray.models.lm import LoraSettings, load_causal_lm, target_parameter_names
from goracs_ray.models.losses import ctr_token_ids
from goracs_ray.models.synthetic import synthetic_samples
from goracs_ray.models.text import tokenize_samples
from goracs_ray.models.tiny import build_tiny_llm


def _rate(fn, batches) -> tuple[float, float, np.ndarray]:
    """(samples per wall second, samples per CPU second of this process, norms)."""
    fn(batches[0])  # warm-up
    wall, cpu = time.perf_counter(), time.process_time()
    norms = [fn(b).norms.numpy() for b in batches]
    n = sum(b["input_ids"].shape[0] for b in batches)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, n / cpu, np.concatenate(norms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="64 samples (< 1 min)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256, help="tokens per sample")
    parser.add_argument("--task", default="seqrec", choices=["seqrec", "ctr"])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (both paths)")
    parser.add_argument("--target", default="last_v_lora_b", choices=["last_v_lora_b", "all_lora"])
    args = parser.parse_args()
    n = 64 if args.quick else args.samples
    torch.set_num_threads(args.threads)
    rows = synthetic_samples(n, task=args.task, seed=0).to_pylist()
    prompts = [format_prompt(r["instruction"], r["input"]) for r in rows]
    outputs = [r["output"] for r in rows]
    with tempfile.TemporaryDirectory() as tmp:
        texts = [format_full_text(r["instruction"], r["input"], r["output"]) for r in rows]
        sizes = {k: v for k, v in vars(DEFAULT_TINY).items() if k != "pretrain_steps"}
        path = build_tiny_llm(texts, f"{tmp}/tiny", **sizes)
        model, tok = load_causal_lm(path, lora=LoraSettings(), attn_implementation="eager")
        fast, _ = load_causal_lm(path, lora=LoraSettings(), attn_implementation="sdpa")
        # vmap needs eager attention; the loop and hooks share the faster sdpa model
    names = target_parameter_names(model, args.target)
    token_ids = ctr_token_ids(tok)
    bs = args.batch_size
    batches = [
        tokenize_samples(tok, prompts[i : i + bs], outputs[i : i + bs], max_length=args.max_length)
        for i in range(0, n, bs)
    ]

    def run(net, method):
        return _rate(
            lambda b: per_sample_grads(
                net, b, names, task=args.task, method=method, token_ids=token_ids
            ),
            batches,
        )

    loop, loop_cpu, ref = run(fast, "loop")
    vmap, _, got_v = run(model, "vmap")
    hooks, hooks_cpu, got_h = run(fast, "hooks")
    n_params = sum(p.numel() for p in model.parameters())
    tokens = float(np.mean([b["attention_mask"].sum(1).float().mean() for b in batches]))
    print(f"model_params: {n_params}")
    print(f"grad_params: {sum(dict(model.named_parameters())[k].numel() for k in names)}")
    print(f"mean_tokens_per_sample: {tokens:.1f}")
    print(f"max_rel_err_hooks: {np.max(np.abs(got_h - ref) / ref):.2e}")
    print(f"max_rel_err_vmap: {np.max(np.abs(got_v - ref) / ref):.2e}")
    print(f"loop_samples_per_s: {loop:.1f}")
    print(f"vmap_samples_per_s: {vmap:.1f}")
    print(f"hooks_samples_per_s: {hooks:.1f}")
    print(f"loop_samples_per_cpu_s: {loop_cpu:.1f}")
    print(f"hooks_samples_per_cpu_s: {hooks_cpu:.1f}")
    print(f"hooks_speedup_cpu_time: {hooks_cpu / loop_cpu:.1f}")
    print(f"vmap_speedup: {vmap / loop:.1f}")
    print(f"hooks_speedup: {hooks / loop:.1f}")


if __name__ == "__main__":
    main()
