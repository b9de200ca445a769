"""The run config: one YAML documents every option; unknown keys fail by dotted path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from goracs_ray.config import RunConfig, load_config
from goracs_ray.configutil import documented_yaml, load_yaml, to_dict

REFERENCE = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "reference.yaml"


def test_reference_yaml_is_current_and_documents_every_option():
    text = documented_yaml(RunConfig())
    body = "\n".join(line for line in REFERENCE.read_text().splitlines()[2:])
    assert body.strip() == text.strip(), "regenerate: goracs config --documented"
    lines = text.splitlines()
    keys = [i for i, line in enumerate(lines) if re.match(r"^\s*[a-z_]+:", line)]
    undocumented = [lines[i] for i in keys if not lines[i - 1].lstrip().startswith("#")]
    assert not undocumented
    assert to_dict(load_config(REFERENCE)) == to_dict(RunConfig())


def test_every_shipped_config_loads():
    import yaml

    from goracs_ray.bench import bench_arms, load_bench_config

    for path in sorted(REFERENCE.parent.glob("*.yaml")):
        if "bench" in (yaml.safe_load(path.read_text()) or {}):
            assert len(bench_arms(load_bench_config(path))) > 1
            assert len(bench_arms(load_bench_config(path, quick=True))) >= 1
        else:
            load_config(path)


def test_overrides_and_unknown_keys(tmp_path):
    cfg = load_config(None, ["select.lam=0.25", "compare=[random, grand]"])
    assert cfg.select.lam == 0.25
    assert cfg.methods == ["goracs", "random", "grand"]
    with pytest.raises(ValueError, match=r"select\.lamda"):
        load_config(None, ["select.lamda=0.3"])
    with pytest.raises(ValueError, match="compare"):
        load_config(None, ["compare=[goracs]"])


def test_stage_commands_read_their_section_of_a_run_yaml(tmp_path):
    from goracs_ray.config import read_section
    from goracs_ray.configutil import from_dict
    from goracs_ray.evaluate.config import EvalConfig

    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("data: {max_users: 5}\neval: {num_beams: 2}\ntrain: {epochs: 4}\n")
    assert read_section(run_yaml, "eval", ["max_samples=3"]) == {"num_beams": 2, "max_samples": 3}
    assert from_dict(EvalConfig, read_section(run_yaml, "eval")).num_beams == 2
    assert read_section(run_yaml, "features") == {}  # a run YAML without the section: defaults
    legacy = tmp_path / "legacy.yaml"
    legacy.write_text("evaluate: {num_beams: 3}\n")
    assert read_section(legacy, "eval") == {"num_beams": 3}
    stage_yaml = tmp_path / "eval.yaml"
    stage_yaml.write_text("num_beams: 1\nks: [5]\n")
    assert read_section(stage_yaml, "eval") == {"num_beams": 1, "ks": [5]}
    typo = tmp_path / "typo.yaml"
    typo.write_text("num_beam: 1\n")
    with pytest.raises(ValueError, match="num_beam"):
        from_dict(EvalConfig, read_section(typo, "eval"), where="eval")


def test_library_modules_do_not_import_cli_modules():
    """Library code sits below the CLI: only `cli.py` modules may import a `cli` module."""
    import ast

    package = Path(__file__).resolve().parents[1] / "goracs_ray"
    offenders = []
    for path in sorted(package.rglob("*.py")):
        if path.name in ("cli.py", "run_cli.py", "__main__.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            bad = [n for n in names if n.split(".")[-1] in ("cli", "run_cli")]
            if bad:
                offenders.append(f"{path.relative_to(package.parent)}:{node.lineno} {bad[0]}")
    assert not offenders, f"library modules import CLI modules: {offenders}"


def test_unknown_methods_are_refused_at_load(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("select: {method: gorax}\n")
    with pytest.raises(ValueError, match=r"unknown selection method\(s\) \['gorax'\]"):
        load_config(path)
    with pytest.raises(ValueError, match=r"\['kcentre'\]"):
        load_config(None, ["compare=[random, kcentre]"])


def test_whole_sample_gradient_loss_for_ctr_is_the_token_loss():
    """`features.loss_on: all` with CTR: the gradients are of the causal-LM loss over the whole
    sample (the reference's), so the loss is SeqRec's token loss; the answer-only CTR loss stays
    the 2-way Yes/No one."""
    from goracs_ray.data.schema import Task

    ctr_all = load_config(None, ["data.task=ctr", "features.loss_on=all"]).features
    assert ctr_all.loss_task(Task.CTR) is Task.SEQREC
    ctr = load_config(None, ["data.task=ctr"]).features
    assert ctr.loss_on.value == "response"
    assert ctr.loss_task(Task.CTR) is Task.CTR
    assert ctr_all.loss_task(Task.SEQREC) is Task.SEQREC


def test_dry_run_lists_every_stage_without_running_anything(tmp_path, capsys):
    from goracs_ray.cli import main

    run_dir = tmp_path / "run"
    args = ["run", "--dry-run", "--set", f"run_dir={run_dir}", "--set", "compare=[random, kcenter]"]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    names = [line.split()[1] for line in lines]
    assert names[:3] == ["prepare", "model", "features"]
    assert names[3:6] == ["select/goracs", "finetune/goracs", "evaluate/goracs"]
    assert len(names) == 3 + 3 * 3
    assert all(line.endswith("would run") for line in lines)
    assert not run_dir.exists()  # nothing written, no Ray started


def test_extends_lays_a_config_over_the_one_it_names(tmp_path):
    """`extends: base.yaml` (relative to the file): mappings merge key by key, lists, scalars and
    null replace, chains resolve in order, and the result has no `extends` key."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "root.yaml").write_text(
        "run_dir: runs/root\n"
        "data: {max_users: 100, history_length: 5}\n"
        "select: {lam: 0.1, max_iters: 50}\n"
        "compare: [random, kcenter]\n"
    )
    (tmp_path / "shared" / "base.yaml").write_text(
        "extends: root.yaml\ndata: {max_users: 200}\nselect: {lam: null}\n"
    )
    (tmp_path / "child.yaml").write_text(
        "extends: shared/base.yaml\nrun_dir: runs/child\ncompare: [grand]\nselect: {lam: 0.3}\n"
    )
    data = load_yaml(tmp_path / "child.yaml")
    assert data == {
        "run_dir": "runs/child",
        "data": {"max_users": 200, "history_length": 5},
        "select": {"lam": 0.3, "max_iters": 50},
        "compare": ["grand"],
    }
    assert load_yaml(tmp_path / "shared" / "base.yaml")["select"] == {"lam": None, "max_iters": 50}
    cfg = load_config(tmp_path / "child.yaml", ["data.max_users=7"])
    assert (cfg.data.max_users, cfg.data.history_length, cfg.select.lam) == (7, 5, 0.3)


@pytest.mark.parametrize(
    ("files", "error", "match"),
    [
        (
            {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: a.yaml\n"},
            ValueError,
            r"cycle: `a.yaml` → `b.yaml` → `a.yaml`",
        ),
        ({"a.yaml": "extends: a.yaml\n"}, ValueError, r"cycle: `a.yaml` → `a.yaml`"),
        (
            {"a.yaml": "extends: gone.yaml\n"},
            FileNotFoundError,
            r"gone.yaml` \(extended by `.*a.yaml`\) does not exist",
        ),
        ({"a.yaml": "extends: [b.yaml]\n"}, ValueError, "`extends` must be the path of another"),
    ],
)
def test_extends_refuses_cycles_missing_files_and_non_paths(tmp_path, files, error, match):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(error, match=match):
        load_yaml(tmp_path / "a.yaml")
