"""`goracs finetune`: LoRA fine-tuning of one sample set on Ray Train."""

from __future__ import annotations

import argparse

from goracs_ray.config import read_model, read_section, split_overrides
from goracs_ray.configutil import from_dict
from goracs_ray.data.schema import Task

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "finetune",
        help="LoRA fine-tuning on Ray Train (+DeepSpeed)",
        description="Fine-tune a HF causal LM with LoRA on SAMPLE_SCHEMA Parquet samples; writes "
        "OUT/adapter (peft), OUT/train_metrics.json and OUT/checkpoints (Ray Train storage).",
    )
    p.add_argument(
        "--model",
        help="base HF model: a dir or a Hub repo id (= model.path; default: the config's)",
    )
    p.add_argument("--train", required=True, help="training samples Parquet (e.g. the coreset)")
    p.add_argument("--valid", required=True, help="validation samples Parquet")
    p.add_argument("--out", required=True, help="output dir")
    p.add_argument("--task", required=True, choices=[t.value for t in Task])
    p.add_argument(
        "--config",
        help="YAML: a run config (its `train:` and `model:` sections) or TrainConfig fields",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a TrainConfig or model field, e.g. --set epochs=5 --set model.lora.r=16",
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing adapter")
    p.add_argument("--no-resume", action="store_true", help="ignore earlier checkpoints")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from goracs_ray.train import TrainConfig, finetune

    stage_set, model_set = split_overrides(args.set)
    cfg = from_dict(TrainConfig, read_section(args.config, "train", stage_set), where="train")
    model = read_model(args.config, model_set, model_path=args.model)
    adapter = finetune(
        cfg,
        model=model,
        train_samples=args.train,
        valid_samples=args.valid,
        out_dir=args.out,
        task=args.task,
        resume=not args.no_resume,
        overwrite=args.overwrite,
    )
    print(adapter)
    return 0
