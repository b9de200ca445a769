# ruff: noqa: E501  (the catalogue reads best as one case per line)
"""The bad-input catalogue: every case exits 2 with one line naming the culprit, writes nothing at
its output path, and prints no traceback. Cases fail in validation, before any heavy work (no Ray
cluster is needed for any of them)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from goracs_ray.cli import main


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Valid and broken inputs, built once."""
    root = tmp_path_factory.mktemp("catalogue")
    rng = np.random.default_rng(0)
    f = {"root": root}

    def npy(name, arr):
        np.save(root / name, arr)
        return root / name

    f["emb"] = npy("emb.npy", rng.normal(size=(12, 4)).astype(np.float32))
    f["valid"] = npy("valid.npy", rng.normal(size=(5, 4)).astype(np.float32))
    f["valid3"] = npy("valid3.npy", rng.normal(size=(5, 3)).astype(np.float32))
    f["emb1d"] = npy("emb1d.npy", rng.normal(size=12).astype(np.float32))
    f["emb_nan"] = npy("emb_nan.npy", np.full((12, 4), np.nan, dtype=np.float32))
    f["grads"] = npy("grads.npy", rng.random(12).astype(np.float32))
    f["grads_short"] = npy("grads_short.npy", rng.random(7).astype(np.float32))
    f["grads_neg"] = npy("grads_neg.npy", -rng.random(12).astype(np.float32))
    f["strings"] = npy("strings.npy", np.array(["a", "b"]))
    (root / "empty.npy").write_bytes(b"")
    f["empty"] = root / "empty.npy"
    (root / "text.npy").write_text("1 2 3\n")
    f["text"] = root / "text.npy"

    def features(name, n_train=8, n_valid=3, **cols):
        n = n_train + n_valid
        table = {
            "sample_id": [f"s{i}" for i in range(n)],
            "split": ["train"] * n_train + ["valid"] * n_valid,
            "embedding": list(rng.normal(size=(n, 4)).astype(np.float32)),
            "grad_norm": rng.random(n).astype(np.float32),
        }
        table.update(cols)
        pq.write_table(pa.table(table), root / name)
        return root / name

    f["features"] = features("features.parquet")
    f["no_valid"] = features("no_valid.parquet", n_train=11, n_valid=0)
    f["dup_ids"] = features("dup_ids.parquet", sample_id=["s0"] * 11)
    f["null_ids"] = features("null_ids.parquet", sample_id=[None] + [f"s{i}" for i in range(10)])
    f["str_norms"] = features("str_norms.parquet", grad_norm=[str(i) for i in range(11)])
    f["no_emb"] = root / "no_emb.parquet"
    pq.write_table(pa.table({"sample_id": ["a"], "split": ["train"]}), f["no_emb"])
    (root / "corrupt.parquet").write_bytes(b"PAR1 not really")
    f["corrupt"] = root / "corrupt.parquet"
    (root / "nofiles").mkdir()
    f["nofiles"] = root / "nofiles"
    unfinished = root / "unfinished"
    unfinished.mkdir()
    pq.write_table(pq.read_table(f["features"]), unfinished / "part-00000.parquet")
    (unfinished / "_run.json").write_text("{}")
    f["unfinished"] = unfinished
    partial = root / "partial"
    partial.mkdir()
    pq.write_table(pq.read_table(f["features"]), partial / "part-00000.parquet")
    (partial / "_run.json").write_text("{}")
    (partial / "_manifest.json").write_text(
        json.dumps({"shards": ["part-00000.parquet", "part-00001.parquet"], "n_rows": 22})
    )
    f["partial"] = partial
    (root / "existing").mkdir()
    f["existing"] = root / "existing"
    (root / "a_file").write_text("x")
    f["a_file"] = root / "a_file"
    (root / "notamodel").mkdir()
    f["notamodel"] = root / "notamodel"

    def run_yaml(name, data):
        (root / name).write_text(yaml.safe_dump(data) if isinstance(data, dict) else data)
        return root / name

    f["yaml_typo"] = run_yaml("typo.yaml", {"select": {"lamda": 0.1}})
    f["yaml_method"] = run_yaml("method.yaml", {"compare": ["random", "kcentre"]})
    f["yaml_moved"] = run_yaml("moved.yaml", {"train": {"lora": {"r": 4}}})
    f["yaml_list"] = run_yaml("list.yaml", "- just\n- a list\n")
    f["yaml_syntax"] = run_yaml("syntax.yaml", "select: {budget: [1, 2\n")
    f["yaml_model"] = run_yaml("model.yaml", {"model": {"path": str(f["notamodel"])}})
    f["yaml_adapter"] = run_yaml("adapter.yaml", {"model": {"adapter_path": str(root)}})
    f["yaml_budget"] = run_yaml("budget.yaml", {"select": {"budget": 0}})
    f["yaml_dtype"] = run_yaml("dtype.yaml", {"model": {"dtype": "int4"}})
    f["yaml_epochs"] = run_yaml("epochs.yaml", {"train": {"epochs": 0}})
    f["yaml_ks"] = run_yaml("ks.yaml", {"eval": {"ks": [0]}})
    f["yaml_device"] = run_yaml("device.yaml", {"model": {"device": "tpu"}})
    f["yaml_eval_moved"] = run_yaml("eval_moved.yaml", {"eval": {"device": "cpu"}})
    f["yaml_repeat"] = run_yaml("repeat.yaml", {"compare": ["goracs"]})
    f["yaml_source"] = run_yaml("source.yaml", {"data": {"source": {"kind": "netflix"}}})
    f["yaml_task"] = run_yaml("task.yaml", {"data": {"task": "rank"}})
    f["yaml_users"] = run_yaml("users.yaml", {"data": {"max_users": 0}})
    f["yaml_ds"] = run_yaml("ds.yaml", {"model": {"deepspeed": 7}})
    f["yaml_features"] = run_yaml("feat.yaml", {"features": {"max_actors": 0}})
    return f


def _select(f, *args):
    return ["select", "--budget", "3", *args]


# (id, argv(files) -> list, culprit in the message, output path(files) that must stay absent)
CASES = [
    # goracs select, .npy inputs
    ("npy-missing-train", lambda f: _select(f, "--train", f["root"] / "nope.npy", "--valid", f["valid"], "--out", f["root"] / "o1"), "nope.npy", "o1"),
    ("npy-missing-valid", lambda f: _select(f, "--train", f["emb"], "--valid", f["root"] / "gone.npy", "--out", f["root"] / "o2"), "gone.npy", "o2"),
    ("npy-empty", lambda f: _select(f, "--train", f["empty"], "--valid", f["valid"], "--out", f["root"] / "o3"), "empty.npy", "o3"),
    ("npy-text", lambda f: _select(f, "--train", f["text"], "--valid", f["valid"], "--out", f["root"] / "o4"), "text.npy", "o4"),
    ("npy-strings", lambda f: _select(f, "--train", f["strings"], "--valid", f["valid"], "--out", f["root"] / "o5"), "strings.npy", "o5"),
    ("npy-1d", lambda f: _select(f, "--train", f["emb1d"], "--valid", f["valid"], "--out", f["root"] / "o6"), "train_emb", "o6"),
    ("npy-dim-mismatch", lambda f: _select(f, "--train", f["emb"], "--valid", f["valid3"], "--out", f["root"] / "o7"), "dims differ", "o7"),
    ("npy-nan", lambda f: _select(f, "--train", f["emb_nan"], "--valid", f["valid"], "--out", f["root"] / "o8"), "train_emb", "o8"),
    ("npy-grads-short", lambda f: _select(f, "--train", f["emb"], "--valid", f["valid"], "--grad-norms", f["grads_short"], "--out", f["root"] / "o9"), "grad_norms", "o9"),
    ("npy-grads-negative", lambda f: _select(f, "--train", f["emb"], "--valid", f["valid"], "--grad-norms", f["grads_neg"], "--out", f["root"] / "o10"), "grad_norms", "o10"),
    ("npy-grads-missing", lambda f: _select(f, "--train", f["emb"], "--valid", f["valid"], "--grad-norms", f["root"] / "g.npy", "--out", f["root"] / "o11"), "g.npy", "o11"),
    ("npy-no-valid", lambda f: _select(f, "--train", f["emb"], "--out", f["root"] / "o12"), "--valid", "o12"),
    ("npy-label-column", lambda f: _select(f, "--train", f["emb"], "--valid", f["valid"], "--label-column", "y", "--out", f["root"] / "o13"), "--label-column", "o13"),
    # goracs select, options
    ("budget-zero", lambda f: ["select", "--budget", "0", "--features", f["features"], "--out", f["root"] / "o14"], "budget", "o14"),
    ("budget-too-big", lambda f: ["select", "--budget", "99", "--features", f["features"], "--out", f["root"] / "o15"], "budget", "o15"),
    ("budget-negative", lambda f: ["select", "--budget", "-4", "--features", f["features"], "--out", f["root"] / "o16"], "budget", "o16"),
    ("method-unknown", lambda f: _select(f, "--method", "gorax", "--features", f["features"], "--out", f["root"] / "o17"), "gorax", "o17"),
    ("lam-negative", lambda f: _select(f, "--lam", "-1", "--features", f["features"], "--out", f["root"] / "o18"), "lam", "o18"),
    ("max-iters-negative", lambda f: _select(f, "--max-iters", "-2", "--features", f["features"], "--out", f["root"] / "o19"), "max_iters", "o19"),
    ("batch-size-zero", lambda f: _select(f, "--batch-size", "0", "--features", f["features"], "--out", f["root"] / "o20"), "batch_size", "o20"),
    ("workers-zero", lambda f: _select(f, "--workers", "0", "--features", f["features"], "--out", f["root"] / "o21"), "workers", "o21"),
    ("features-and-train", lambda f: _select(f, "--features", f["features"], "--train", f["emb"], "--out", f["root"] / "o22"), "--features", "o22"),
    ("no-inputs", lambda f: _select(f, "--out", f["root"] / "o23"), "--features", "o23"),
    # goracs select, Parquet features
    ("features-missing", lambda f: _select(f, "--features", f["root"] / "nowhere", "--out", f["root"] / "o24"), "nowhere", "o24"),
    ("features-no-files", lambda f: _select(f, "--features", f["nofiles"], "--out", f["root"] / "o25"), "nofiles", "o25"),
    ("features-no-embedding", lambda f: _select(f, "--features", f["no_emb"], "--out", f["root"] / "o26"), "no_emb.parquet", "o26"),
    ("features-no-valid-rows", lambda f: _select(f, "--features", f["no_valid"], "--out", f["root"] / "o27"), "no_valid.parquet", "o27"),
    ("features-duplicate-ids", lambda f: _select(f, "--features", f["dup_ids"], "--out", f["root"] / "o28"), "duplicates", "o28"),
    ("features-null-ids", lambda f: _select(f, "--features", f["null_ids"], "--out", f["root"] / "o29"), "null_ids.parquet", "o29"),
    ("features-string-norms", lambda f: _select(f, "--features", f["str_norms"], "--out", f["root"] / "o30"), "str_norms.parquet", "o30"),
    ("features-corrupt", lambda f: _select(f, "--features", f["corrupt"], "--out", f["root"] / "o31"), "corrupt.parquet", "o31"),
    ("features-unfinished", lambda f: _select(f, "--features", f["unfinished"], "--out", f["root"] / "o32"), "unfinished", "o32"),
    ("features-missing-shard", lambda f: _select(f, "--features", f["partial"], "--out", f["root"] / "o33"), "part-00001.parquet", "o33"),
    ("features-label-missing", lambda f: _select(f, "--features", f["features"], "--label-column", "label", "--out", f["root"] / "o34"), "label", "o34"),
    # goracs select, output location
    ("out-exists", lambda f: _select(f, "--features", f["features"], "--out", f["existing"]), "--overwrite", None),
    ("out-is-input", lambda f: _select(f, "--features", f["partial"], "--out", f["partial"], "--overwrite"), "overlaps", None),
    ("out-inside-input", lambda f: _select(f, "--features", f["unfinished"], "--out", f["unfinished"] / "c"), "overlaps", None),
    ("out-contains-input", lambda f: _select(f, "--features", f["features"], "--out", f["root"], "--overwrite"), "overlaps", None),
    ("out-parent-is-file", lambda f: _select(f, "--features", f["features"], "--out", f["a_file"] / "o"), "a_file", None),
    # goracs run (validation at load, before Ray)
    ("run-yaml-missing", lambda f: ["run", f["root"] / "absent.yaml"], "absent.yaml", None),
    ("run-unknown-key", lambda f: ["run", f["yaml_typo"]], "select.lamda", None),
    ("run-unknown-method", lambda f: ["run", f["yaml_method"]], "kcentre", None),
    ("run-moved-key", lambda f: ["run", f["yaml_moved"]], "model.lora", None),
    ("run-not-a-mapping", lambda f: ["run", f["yaml_list"]], "list.yaml", None),
    ("run-yaml-syntax", lambda f: ["run", f["yaml_syntax"]], "syntax.yaml", None),
    ("run-model-not-a-model", lambda f: ["run", f["yaml_model"], "--set", f"run_dir={f['root'] / 'r1'}"], "model.path", "r1"),
    ("run-adapter-not-an-adapter", lambda f: ["run", f["yaml_adapter"], "--set", f"run_dir={f['root'] / 'r2'}"], "model.adapter_path", "r2"),
    ("run-budget-zero", lambda f: ["run", f["yaml_budget"]], "budget", None),
    ("run-bad-dtype", lambda f: ["run", f["yaml_dtype"]], "model.dtype", None),
    ("run-epochs-zero", lambda f: ["run", f["yaml_epochs"]], "train.epochs", None),
    ("run-ks-zero", lambda f: ["run", f["yaml_ks"]], "eval.ks", None),
    ("run-bad-device", lambda f: ["run", f["yaml_device"]], "model.device", None),
    ("run-eval-device-moved", lambda f: ["run", f["yaml_eval_moved"]], "model.device", None),
    ("run-method-repeated", lambda f: ["run", f["yaml_repeat"]], "compare", None),
    ("run-bad-source-kind", lambda f: ["run", f["yaml_source"]], "netflix", None),
    ("run-bad-task", lambda f: ["run", f["yaml_task"]], "rank", None),
    ("run-max-users-zero", lambda f: ["run", f["yaml_users"]], "max_users", None),
    ("run-bad-deepspeed", lambda f: ["run", f["yaml_ds"]], "model.deepspeed", None),
    ("run-bad-features", lambda f: ["run", f["yaml_features"]], "max_actors", None),
    ("run-bad-override", lambda f: ["run", "--set", "select.budget=many"], "select.budget", None),
    ("run-override-not-key-value", lambda f: ["run", "--set", "select.budget"], "select.budget", None),
    # goracs prepare
    ("prepare-bad-kind", lambda f: ["prepare", "--config", f["yaml_source"], "--out", f["root"] / "p1"], "netflix", "p1"),
    ("prepare-missing-path", lambda f: ["prepare", "--source", "recbole", "--path", f["root"] / "no_such_dir", "--out", f["root"] / "p2"], "no_such_dir", "p2"),
    # goracs features / finetune / evaluate
    ("features-samples-missing", lambda f: ["features", "--samples", f["root"] / "no_samples", "--model", f["model"], "--out", f["root"] / "f1"], "no_samples", "f1"),
    ("features-model-not-a-model", lambda f: ["features", "--samples", f["root"], "--model", f["notamodel"], "--out", f["root"] / "f2"], "notamodel", "f2"),
    ("features-bad-set", lambda f: ["features", "--samples", f["root"], "--set", "proj_dim=-1", "--out", f["root"] / "f3"], "proj_dim", "f3"),
    ("features-moved-key", lambda f: ["features", "--samples", f["root"], "--set", "lora.r=4", "--out", f["root"] / "f4"], "model.lora", "f4"),
    ("finetune-model-not-a-model", lambda f: ["finetune", "--model", f["notamodel"], "--train", f["features"], "--valid", f["features"], "--out", f["root"] / "t1", "--task", "seqrec"], "notamodel", "t1"),
    ("finetune-out-overlaps", lambda f: ["finetune", "--model", f["model"], "--train", f["features"], "--valid", f["features"], "--out", f["root"], "--task", "seqrec"], "overlaps", None),
    ("finetune-bad-set", lambda f: ["finetune", "--model", f["model"], "--train", f["features"], "--valid", f["features"], "--out", f["root"] / "t3", "--task", "seqrec", "--set", "epochs=0"], "train.epochs", "t3"),
    ("evaluate-model-not-a-model", lambda f: ["evaluate", "--model", f["notamodel"], "--test", f["features"], "--out", f["root"] / "e1", "--task", "ctr"], "notamodel", "e1"),
    ("evaluate-bad-set", lambda f: ["evaluate", "--model", f["model"], "--test", f["features"], "--out", f["root"] / "e2", "--task", "ctr", "--set", "ks=[0]"], "eval.ks", "e2"),
]  # fmt: skip


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60
    assert len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "argv", "culprit", "out"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_gives_one_clear_line(files, tiny_model_dir, capsys, case, argv, culprit, out):
    files["model"] = tiny_model_dir
    args = [str(a) for a in argv(files)]
    capsys.readouterr()
    code = main(args)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (case, captured.err[-2000:])
    assert len(lines) == 1, lines
    assert "Traceback" not in captured.err
    assert lines[0].startswith(f"goracs {args[0]}: error: ")
    assert culprit in lines[0], lines[0]
    if out is not None:
        assert not (files["root"] / out).exists()
        assert not (files["root"] / f"{out}.part").exists()
