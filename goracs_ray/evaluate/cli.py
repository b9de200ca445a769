"""`goracs evaluate`: test metrics of a base model + LoRA adapter, written to metrics.json."""

from __future__ import annotations

import argparse
import json

from goracs_ray.config import read_model, read_section, split_overrides
from goracs_ray.configutil import from_dict
from goracs_ray.data.schema import Task

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="likelihood + grounded NDCG/HR@K (SeqRec) or AUC (CTR) on test samples",
        description="Evaluate a base model (+ peft adapter) on SAMPLE_SCHEMA test samples; writes "
        "OUT/metrics.json and OUT/predictions.parquet.",
    )
    p.add_argument(
        "--model",
        help="base HF model: a dir or a Hub repo id (= model.path; default: the config's)",
    )
    p.add_argument("--adapter", help="peft adapter dir (omit to evaluate the base model)")
    p.add_argument("--test", required=True, help="test samples Parquet")
    p.add_argument("--items", help="catalog Parquet (ITEM_SCHEMA); required for SeqRec")
    p.add_argument("--out", required=True, help="output dir")
    p.add_argument("--task", choices=[t.value for t in Task], help="default: the samples' task")
    p.add_argument(
        "--config", help="YAML with EvalConfig fields (top level, or a run YAML's `eval:`)"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override an EvalConfig or model field, e.g. --set num_beams=2 "
        "--set model.dtype=bfloat16",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from goracs_ray.evaluate import EvalConfig, evaluate

    stage_set, model_set = split_overrides(args.set)
    cfg = from_dict(EvalConfig, read_section(args.config, "eval", stage_set), where="eval")
    model = read_model(args.config, model_set, model_path=args.model)
    if args.task != Task.CTR.value and args.items is None:
        # SeqRec (or unknown task) needs the catalog for grounding.
        import pyarrow.parquet as pq

        tasks = set(pq.read_table(args.test, columns=["task"]).column("task").to_pylist())
        if tasks != {Task.CTR.value}:
            raise ValueError("`--items` is required for SeqRec evaluation (grounding catalog)")
    result = evaluate(
        cfg,
        model=model,
        adapter_path=args.adapter,
        test_samples=args.test,
        items=args.items,
        out_dir=args.out,
        task=args.task,
    )
    print(json.dumps(result, indent=2))
    return 0
