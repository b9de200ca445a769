"""Fine-tuning on a real local Ray Train (2 CPU workers), checkpoints, resume, DeepSpeed, faults."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from goracs_ray.io import read_json
from goracs_ray.models.config import LoraSettings, ModelConfig
from goracs_ray.train import FaultInjection, TrainConfig, deepspeed_config, finetune
from goracs_ray.train.core import EarlyStopping


def _cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(
        epochs=1,
        batch_size=2,
        eval_batch_size=4,
        max_length=64,
        lr=5e-3,
        num_workers=2,
        cpus_per_worker=0.5,
        max_failures=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _model(model_dir, **kw) -> ModelConfig:
    """The tiny test model with a small fresh adapter, plain DDP."""
    return ModelConfig(
        **{"path": model_dir, "deepspeed": None, "lora": LoraSettings(r=4, alpha=8), **kw}
    )


def _lora_b_norm(adapter_dir) -> float:
    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    return float(sum(np.linalg.norm(v) for k, v in tensors.items() if "lora_B" in k))


def test_two_worker_finetune_checkpoints_and_resumes(
    ray_local, tmp_path, train_data, train_model_dir
):
    train, valid = train_data["seqrec"]
    out = tmp_path / "ft"
    kw = dict(
        model=_model(train_model_dir),
        train_samples=train,
        valid_samples=valid,
        out_dir=out,
        task="seqrec",
    )
    # Elastic range (1..2 workers): the 2 free fractional-CPU slots give 2 workers.
    adapter = finetune(_cfg(tmp_path, min_workers=1), **kw)
    assert sorted(p.name for p in adapter.iterdir()) == [
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    assert _lora_b_norm(adapter) > 0  # lora_B starts at 0: training moved it
    first = read_json(out / "train_metrics.json")
    assert [e["epoch"] for e in first["epochs"]] == [0]
    with pytest.raises(FileExistsError, match="overwrite"):
        finetune(_cfg(tmp_path, min_workers=1), **kw)

    # Same run, two epochs: resumes after epoch 0 from its checkpoint instead of redoing it.
    finetune(_cfg(tmp_path, epochs=2, min_workers=1), overwrite=True, **kw)
    second = read_json(out / "train_metrics.json")
    assert [e["epoch"] for e in second["epochs"]] == [0, 1]
    assert second["epochs"][0] == first["epochs"][0]
    assert all(math.isfinite(e["valid_loss"]) for e in second["epochs"])
    assert second["best_epoch"] == int(np.argmin([e["valid_loss"] for e in second["epochs"]]))

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(train_model_dir), adapter
    )
    assert model.peft_config["default"].r == 4


def _epoch_checkpoints(out) -> dict[int, list[Path]]:
    """Ray Train checkpoint dirs under ``out/checkpoints`` by the number of epochs they hold."""
    found = {}
    for ckpt in sorted(
        p for p in (out / "checkpoints").glob("finetune-*/checkpoint_*") if p.is_dir()
    ):
        found.setdefault(len(read_json(ckpt / "state.json")["history"]), []).append(ckpt)
    return found


def _max_abs_diff(a_dir, b_dir) -> float:
    a = load_file(str(a_dir / "adapter_model.safetensors"))
    b = load_file(str(b_dir / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    return max(float(np.abs(a[k] - b[k]).max()) for k in a)


def test_worker_killed_mid_epoch_deepspeed_restores_and_finishes(
    ray_local, tmp_path, train_data, train_model_dir
):
    """Rank 1 dies in epoch 1: Ray Train restarts from epoch 0's checkpoint (DeepSpeed ZeRO-2
    on CPU/gloo) and finishes; each epoch is reported once and the adapter written once.

    The restarted run ends exactly where an uninterrupted run with the same seed ends (max abs
    difference of every LoRA tensor 0.0, equal losses): the checkpoint restores the LoRA weights
    and the DeepSpeed optimiser state, each epoch's data order (``local_shuffle_seed``) and
    dropout seed (``worker.epoch_seed``) depend on the epoch alone, and the two-rank gloo
    all-reduce is deterministic.
    """
    train, valid = train_data["ctr"]
    marker = tmp_path / "killed.txt"
    kw = dict(
        model=_model(train_model_dir, deepspeed=2),
        train_samples=train,
        valid_samples=valid,
        task="ctr",
    )
    out = tmp_path / "ft"
    adapter = finetune(
        _cfg(tmp_path, epochs=2),
        out_dir=out,
        fault=FaultInjection(str(marker), epoch=1, step=1, rank=1),
        **kw,
    )
    assert marker.read_text().startswith("killed rank 1 at epoch 1")
    metrics = read_json(out / "train_metrics.json")
    assert [e["epoch"] for e in metrics["epochs"]] == [0, 1]
    assert metrics["deepspeed"] == 2
    assert (adapter / "adapter_config.json").is_file()
    assert not any(p.name.endswith((".part", ".old")) for p in out.iterdir())
    # Restored, not restarted from scratch: one checkpoint of epoch 0 (written before the kill)
    # and one of epochs 0-1 (a run from scratch would have written epoch 0 twice).
    ckpts = _epoch_checkpoints(out)
    assert {n: len(c) for n, c in ckpts.items()} == {1: 1, 2: 1}
    assert (ckpts[1][0] / "ds" / "ds").is_dir()

    plain = tmp_path / "uninterrupted"
    plain_adapter = finetune(_cfg(tmp_path, epochs=2), out_dir=plain, **kw)
    assert read_json(plain / "train_metrics.json")["epochs"] == metrics["epochs"]
    last = _max_abs_diff(ckpts[2][0] / "adapter", _epoch_checkpoints(plain)[2][0] / "adapter")
    best = _max_abs_diff(adapter, plain_adapter)
    print(f"max abs diff after the restart: last epoch {last}, best adapter {best}")
    assert last == 0.0
    assert best == 0.0


def test_ray_train_run_name_is_stable_per_call_and_apart_for_two_arms_on_one_coreset(
    tmp_path, train_model_dir
):
    """The bench shares one Ray Train storage (``run_dir/ray_train``) between arms. Two methods
    that chose the same coreset (GraNd and EL2N at budget 64 on CTR did) fine-tune on the same
    samples with the same config at the same time: they must not share a run (its checkpoints
    were written and pruned by both, and one arm died restoring a deleted one), while a rerun
    of the same call keeps its name and resumes."""
    from goracs_ray.data.schema import Task
    from goracs_ray.train.finetune import _run_name

    cfg, model = _cfg(tmp_path), _model(train_model_dir)
    samples = ["train-fingerprint", "valid-fingerprint"]
    grand = _run_name(cfg, Task.CTR, model, samples, tmp_path / "finetune/grand/b64-s0.part")
    el2n = _run_name(cfg, Task.CTR, model, samples, tmp_path / "finetune/el2n/b64-s0.part")
    again = _run_name(cfg, Task.CTR, model, samples, tmp_path / "finetune/grand/b64-s0.part")
    assert grand != el2n
    assert grand == again
    assert grand.startswith("finetune-")
    # what resumes may change (the epochs cap), what defines the trajectory may not
    assert _run_name(_cfg(tmp_path, epochs=5), Task.CTR, model, samples, tmp_path / "a") == (
        _run_name(cfg, Task.CTR, model, samples, tmp_path / "a")
    )
    assert _run_name(_cfg(tmp_path, lr=1e-3), Task.CTR, model, samples, tmp_path / "a") != (
        _run_name(cfg, Task.CTR, model, samples, tmp_path / "a")
    )


def test_deepspeed_config_generation_and_user_json(tmp_path):
    cfg = deepspeed_config(2, micro_batch_size=4, grad_accum=3, grad_clip=0.5)
    assert cfg["zero_optimization"]["stage"] == 2
    assert cfg["train_micro_batch_size_per_gpu"] == 4
    assert cfg["gradient_accumulation_steps"] == 3
    assert "train_batch_size" not in cfg  # derived from the (elastic) world size
    assert "optimizer" not in cfg
    assert deepspeed_config(None, micro_batch_size=4, grad_accum=1) is None
    user = tmp_path / "ds.json"
    user.write_text(
        json.dumps(
            {
                "zero_optimization": {"stage": 3},
                "train_micro_batch_size_per_gpu": "auto",
                "train_batch_size": "auto",
            }
        )
    )
    filled = deepspeed_config(
        ModelConfig(deepspeed=str(user)).deepspeed_setting(False), micro_batch_size=8, grad_accum=2
    )
    assert filled == {
        "zero_optimization": {"stage": 3},
        "train_micro_batch_size_per_gpu": 8,
        "gradient_accumulation_steps": 2,
    }
    user.write_text(json.dumps({"optimizer": {"type": "Adam"}}))
    with pytest.raises(ValueError, match="`optimizer`"):
        deepspeed_config(user, micro_batch_size=8, grad_accum=2)


def test_deepspeed_auto_is_stage_2_on_gpu_only():
    assert ModelConfig().deepspeed_setting(on_gpu=True) == 2
    assert ModelConfig().deepspeed_setting(on_gpu=False) is None
    assert ModelConfig(deepspeed=3).deepspeed_setting(on_gpu=False) == 3


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"epochs": 0}, "train.epochs"),
        ({"min_workers": 3, "num_workers": 2}, "train.min_workers"),
        ({"patience": 0}, "train.patience"),
        ({"lr": 0.0}, "train.lr"),
        ({"warmup_steps": -1}, "train.warmup_steps"),
        ({"max_valid_samples": 0}, "train.max_valid_samples"),
        ({"torch_threads": 0}, "train.torch_threads"),
    ],
)
def test_train_config_rejects_bad_values(kw, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        TrainConfig(**kw)


def test_worker_threads_follow_the_reserved_cpus():
    """A worker never runs more torch threads than the CPUs it reserved (at least 1)."""
    assert TrainConfig(cpus_per_worker=0.5).worker_threads == 1
    assert TrainConfig(cpus_per_worker=1.0).worker_threads == 1
    assert TrainConfig(cpus_per_worker=3.7).worker_threads == 3
    assert TrainConfig(cpus_per_worker=0.5, torch_threads=4).worker_threads == 4


def test_missing_deepspeed_json_names_the_field(tmp_path):
    with pytest.raises(ValueError, match="model.deepspeed"):
        ModelConfig(deepspeed=str(tmp_path / "nope.json"))


def test_early_stopping_patience():
    stop = EarlyStopping(patience=2)
    assert stop.update(0, 1.0)
    assert not stop.update(1, 1.5)
    assert not stop.should_stop
    assert not stop.update(2, 1.2)
    assert stop.should_stop
    assert (stop.best_epoch, stop.best_loss) == (0, 1.0)
    assert EarlyStopping.from_json(stop.to_json()) == stop


def test_finetune_rejects_samples_without_the_prompt_columns(ray_local, tmp_path, train_model_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "output": ["x"]}), bad)
    with pytest.raises(ValueError, match="`instruction`"):
        finetune(
            _cfg(tmp_path),
            model=_model(train_model_dir),
            train_samples=bad,
            valid_samples=bad,
            out_dir=tmp_path / "o",
            task="seqrec",
        )
    assert not (tmp_path / "o" / "adapter").exists()


def test_train_config_from_yaml_section(tmp_path):
    from goracs_ray.config import read_model, read_section, split_overrides
    from goracs_ray.configutil import from_dict

    path = tmp_path / "run.yaml"
    path.write_text(
        "train:\n  epochs: 4\nmodel:\n  lora:\n    r: 16\n    target_modules: [v_proj]\n"
    )
    stage_set, model_set = split_overrides(["grad_accum=3", "model.deepspeed=3"])
    cfg = from_dict(TrainConfig, read_section(str(path), "train", stage_set), where="train")
    model = read_model(str(path), model_set)
    assert (cfg.epochs, cfg.grad_accum) == (4, 3)
    assert (model.lora.r, model.lora.target_modules, model.deepspeed) == (16, ("v_proj",), 3)
    with pytest.raises(ValueError, match=r"model\.lora\.rank"):
        from_dict(ModelConfig, {"lora": {"rank": 2}}, where="model")


def test_finetune_from_an_adapter_with_warmup_all_linear_and_capped_validation(
    ray_local, tmp_path, train_data, train_model_dir
):
    """A second fine-tune starts from the first one's adapter (all-linear LoRA, as the reference
    starts from an instruction-tuned adapter), with warm-up and a capped validation set."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train, valid = train_data["seqrec"]
    kw = dict(train_samples=train, valid_samples=valid, task="seqrec")
    lora = LoraSettings(r=4, alpha=8, target_modules=["all-linear"])
    first = finetune(
        _cfg(tmp_path, num_workers=1, warmup_steps=3, max_valid_samples=2),
        model=_model(train_model_dir, lora=lora),
        out_dir=tmp_path / "a",
        **kw,
    )
    metrics = read_json(tmp_path / "a" / "train_metrics.json")
    assert metrics["n_valid"] == 2
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(train_model_dir), first)
    targets = {t.rsplit(".", 1)[-1] for t in model.peft_config["default"].target_modules}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= targets
    assert "lm_head" not in targets
    start = load_file(str(first / "adapter_model.safetensors"))
    second = finetune(
        _cfg(tmp_path, num_workers=1, lr=1e-9),
        model=_model(train_model_dir, adapter_path=first),
        out_dir=tmp_path / "b",
        **kw,
    )
    after = load_file(str(second / "adapter_model.safetensors"))
    assert set(after) == set(start)  # the given adapter's modules, not a fresh q/v one
    for name, value in start.items():  # a tiny lr: the result stays at the starting adapter
        np.testing.assert_allclose(after[name], value, atol=1e-5)


def test_warmup_schedule_is_linear_then_constant():
    import torch

    from goracs_ray.train.core import warmup_schedule

    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=1.0)
    sched = warmup_schedule(opt, 4)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    assert warmup_schedule(opt, 0) is None


@pytest.mark.parametrize("flag", [False, True])
def test_train_on_inputs_puts_the_loss_on_the_prompt(train_model_dir, flag):
    from transformers import AutoTokenizer

    from goracs_ray.models.losses import IGNORE_INDEX
    from goracs_ray.models.synthetic import synthetic_samples
    from goracs_ray.train.core import collate

    tok = AutoTokenizer.from_pretrained(train_model_dir)
    rows = synthetic_samples(3, seed=0).to_pydict()
    batch = collate(tok, rows, max_length=128, train_on_inputs=flag)
    answer = collate(tok, rows, max_length=128)
    labelled = (batch["labels"] != IGNORE_INDEX).sum(dim=1)
    answer_only = (answer["labels"] != IGNORE_INDEX).sum(dim=1)
    tokens = batch["attention_mask"].sum(dim=1)
    if flag:  # every token but bos
        assert labelled.tolist() == (tokens - 1).tolist()
    else:
        assert labelled.tolist() == answer_only.tolist()
    assert (answer_only < tokens - 1).all()


def test_train_on_inputs_is_seqrec_only(ray_local, tmp_path, train_data, train_model_dir):
    train, valid = train_data["ctr"]
    with pytest.raises(ValueError, match="train_on_inputs"):
        finetune(
            _cfg(tmp_path, train_on_inputs=True),
            model=_model(train_model_dir),
            train_samples=train,
            valid_samples=valid,
            out_dir=tmp_path / "o",
            task="ctr",
        )
    assert not (tmp_path / "o").exists()


def test_the_epoch_bar_shows_on_a_terminal_only_and_counts_resumed_epochs(ray_local):
    """Rank 0's bar (Ray's tqdm_ray, drawn by the driver); `finetune` asks for it only when the
    driver's stderr is a terminal."""
    from goracs_ray.train.worker import epoch_bar

    assert epoch_bar(False, total=3, done=0) is None
    bar = epoch_bar(True, total=3, done=1)  # resumed after epoch 0
    assert (bar.total, bar.n) == (3, 1)
    bar.update(1)
    assert bar.n == 2
    bar.close()
