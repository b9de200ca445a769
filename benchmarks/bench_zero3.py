"""Weights per worker of a ZeRO-3 features group (``features.model_shards``) against one process.

Builds a LLaMA of about 15 M parameters (hidden 512, 4 layers, MLP 1,376; ``--quick``: 2 M,
hidden 256) and scores the same 64 synthetic SeqRec samples twice (per-sample gradient norms of
the default target, the last v_proj lora_B, of a LoRA r 16 on all linear layers; LLM-mean
embeddings from the same forward), each in fresh processes:

- ``torch``: one process holding the whole model (``FeatureComputer``, the default path);
- ``zero3``: k processes (``--shards``, default 2) that join one gloo group and load the model
  partitioned with DeepSpeed ZeRO-3 (``FeatureComputer(group=ZeroGroup(...))``, exactly what each
  rank of a ``features.model_shards: k`` group runs, without Ray around it), with DeepSpeed's
  default ``stage3_param_persistence_threshold`` (matrices below 100,000 elements stay whole).

Printed per path: weight bytes a worker holds (``param_bytes``: its partition plus the whole
small parameters) and its peak RSS, the largest norm difference between the two paths, the wall
time of the scoring, and last the ratio of weight bytes per worker (zero3 / torch). On this tiny
scale the process's RSS is dominated by torch and DeepSpeed themselves (≈ 0.5–0.8 GiB); the
weights are what ZeRO-3 divides, and on a 7B–70B model they dominate.
On a host with k GPUs the ranks run on one GPU each with NCCL (the GPU check of this path).
Usage: python benchmarks/bench_zero3.py [--quick] [--shards 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

_RANK = r"""
import json, resource, sys, time
import numpy as np
from goracs_ray.data.prompts import format_prompt
from goracs_ray.features.compute import FeatureComputer, ZeroGroup
from goracs_ray.features.config import FeaturesConfig
from goracs_ray.models.config import LoraSettings, ModelConfig
from goracs_ray.models.synthetic import synthetic_samples

model_dir, port, out = sys.argv[1], sys.argv[4], sys.argv[5]
rank, world = int(sys.argv[2]), int(sys.argv[3])
rows = synthetic_samples(64, seed=3).to_pylist()
cfg = FeaturesConfig(max_length=192)  # default target: the last v_proj lora_B
lora = LoraSettings(r=16, alpha=32, target_modules=["all-linear"])
model = ModelConfig(lora=lora, deepspeed=3 if world > 1 else None)
group = None
if world > 1:
    group = ZeroGroup(rank, world, "127.0.0.1", int(port), model.features_zero3_config(world))
computer = FeatureComputer(cfg, model, "seqrec", model_dir, None, group=group)
start = time.perf_counter()
table = computer.compute([r["sample_id"] for r in rows], ["train"] * len(rows),
                         [format_prompt(r["instruction"], r["input"]) for r in rows],
                         [r["output"] for r in rows])
seconds = time.perf_counter() - start
rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
json.dump({**computer.param_bytes(), "rss": rss, "seconds": seconds,
           "norms": table["grad_norm"].to_pylist()}, open(out, "w"))
"""


def _run(model_dir: Path, world: int, tmp: Path) -> list[dict]:
    import os

    import torch

    from goracs_ray.raycluster import free_port

    port = str(free_port())
    outs = [tmp / f"w{world}-r{r}.json" for r in range(world)]
    gpus = torch.cuda.device_count()
    if 0 < gpus < world:
        raise SystemExit(
            f"{world} ranks need {world} GPUs for NCCL (one each); this host has {gpus}"
        )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _RANK, str(model_dir), str(r), str(world), port, str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            # one GPU per rank, as Ray gives each group actor (NCCL needs distinct devices)
            env={**os.environ, **({"CUDA_VISIBLE_DEVICES": str(r)} if gpus else {})},
        )
        for r, out in enumerate(outs)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"a rank failed:\n{err[-3000:]}")
    return [json.loads(out.read_text()) for out in outs]


def main() -> None:
    from goracs_ray.data.prompts import format_full_text
    from goracs_ray.models.synthetic import synthetic_samples
    from goracs_ray.models.tiny import build_tiny_llm

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="hidden 256, 2 layers (< 1 min)")
    parser.add_argument("--shards", type=int, default=2, help="ranks of the ZeRO-3 group")
    args = parser.parse_args()
    hidden, layers, mlp = (256, 2, 688) if args.quick else (512, 4, 1376)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = [
            format_full_text(r["instruction"], r["input"], r["output"])
            for r in synthetic_samples(200, seed=0).to_pylist()
        ]
        model_dir = build_tiny_llm(
            texts, tmp / "model", vocab_size=2048, hidden_size=hidden, num_layers=layers,
            num_heads=8, intermediate_size=mlp,
        )  # fmt: skip
        (torch_rank,) = _run(model_dir, 1, tmp)
        zero3 = _run(model_dir, args.shards, tmp)
    mib = 2**20
    gap = max(
        float(np.max(np.abs(np.subtract(z["norms"], torch_rank["norms"])) / torch_rank["norms"]))
        for z in zero3
    )
    print(f"model_params: {torch_rank['whole'] // 4}")
    print(f"shards: {args.shards}")
    print(f"samples: {len(torch_rank['norms'])}")
    print(f"torch_param_mib_per_worker: {torch_rank['held'] / mib:.2f}")
    print(f"zero3_param_mib_per_worker: {max(z['held'] for z in zero3) / mib:.2f}")
    print(f"torch_peak_rss_mib: {torch_rank['rss'] / mib:.0f}")
    print(f"zero3_peak_rss_mib_per_worker: {max(z['rss'] for z in zero3) / mib:.0f}")
    print(f"torch_seconds: {torch_rank['seconds']:.2f}")
    print(f"zero3_seconds: {max(z['seconds'] for z in zero3):.2f}")
    print(f"max_rel_norm_gap: {gap:.2e}")
    ratio = max(z["held"] for z in zero3) / torch_rank["held"]
    print(f"zero3_param_bytes_per_worker_ratio: {ratio:.3f}")


if __name__ == "__main__":
    main()
