"""The docs' code cannot rot: every code block of README.md and docs/*.md is checked.

- ``python`` blocks: every ``goracs_ray`` import resolves, and every call of an imported
  goracs_ray callable binds to its signature (names and count of the arguments). Blocks that run
  in seconds are also executed, with the inputs they name made up (:data:`SETUP`).
- ``bash`` blocks: every ``goracs …`` line parses with the real CLI parser; a ``run`` or
  ``bench`` loads its config (a repo file, or for ``run`` the defaults a user's own YAML was made
  from) with its ``--set`` overrides, so unknown keys and bad values fail; every ``jobs/``,
  ``benchmarks/`` or ``cluster/`` path a line names exists.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shlex
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _blocks(lang: set[str]) -> list[tuple[str, str]]:
    """(id ``file:line``, code) of every fenced block in one of ``lang``."""
    out = []
    for doc in DOCS:
        text = doc.read_text()
        for m in _FENCE.finditer(text):
            if m.group(1) in lang:
                line = text.count("\n", 0, m.start()) + 1
                out.append((f"{doc.relative_to(REPO)}:{line}", m.group(2)))
    return out


PYTHON_BLOCKS = _blocks({"python"})
SHELL_BLOCKS = _blocks({"bash", "sh", "console"})


def _made_up_features(seed: int = 0):
    from goracs_ray.select.types import FeatureTable

    rng = np.random.default_rng(seed)
    return FeatureTable(
        train_ids=np.arange(2000),
        train_emb=rng.normal(size=(2000, 8)),
        valid_emb=rng.normal(size=(40, 8)),
        grad_norms=rng.gamma(2.0, size=2000),
    )


# Inputs of the blocks that are executed, keyed by the block's first code line.
SETUP = {
    "import goracs_ray": lambda: {
        "train_emb": np.random.default_rng(0).normal(size=(3000, 16)).astype(np.float32),
        "valid_emb": np.random.default_rng(1).normal(size=(200, 16)).astype(np.float32),
        "grad_norms": np.random.default_rng(2).gamma(2.0, size=3000).astype(np.float32),
    },
    "from goracs_ray.select import FeatureTable, run_selector": lambda: {
        "features": _made_up_features()
    },
}


def _goracs_names(tree: ast.Module) -> dict[str, object]:
    """Every name a block binds by importing from goracs_ray, resolved (ImportError fails)."""
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("goracs_ray"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):  # a submodule: `from goracs_ray import api`
                    importlib.import_module(f"{node.module}.{alias.name}")
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                names[alias.asname or alias.name] = getattr(module, alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("goracs_ray"):
                    names[alias.asname or alias.name] = importlib.import_module(alias.name)
    return names


def _callee(func: ast.expr, names: dict[str, object]) -> object | None:
    """The goracs_ray object a call's ``func`` names (``f(…)``, ``mod.f(…)``), else None."""
    if isinstance(func, ast.Name):
        return names.get(func.id)
    if isinstance(func, ast.Attribute):
        owner = _callee(func.value, names)
        if inspect.ismodule(owner):
            assert hasattr(owner, func.attr), f"{owner.__name__} has no {func.attr}"
            return getattr(owner, func.attr)
    return None


@pytest.mark.parametrize(("where", "code"), PYTHON_BLOCKS, ids=[w for w, _ in PYTHON_BLOCKS])
def test_python_block_imports_resolve_and_calls_bind(where, code):
    tree = ast.parse(code, filename=where)
    names = _goracs_names(tree)
    assert names, f"{where}: a python block that uses no goracs_ray name"
    calls = 0
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _callee(node.func, names)
        if target is None or not callable(target) or inspect.ismodule(target):
            continue
        args = [None] * len(node.args)
        kwargs = {kw.arg: None for kw in node.keywords if kw.arg is not None}
        try:
            inspect.signature(target).bind(*args, **kwargs)
        except TypeError as exc:
            pytest.fail(f"{where}: {ast.unparse(node.func)}(…) does not match its signature: {exc}")
        calls += 1
    assert calls, f"{where}: no goracs_ray call was checked"


@pytest.mark.parametrize(
    ("where", "code"),
    [(w, c) for w, c in PYTHON_BLOCKS if c.splitlines()[0] in SETUP],
    ids=[w for w, c in PYTHON_BLOCKS if c.splitlines()[0] in SETUP],
)
def test_python_block_runs(where, code):
    namespace = SETUP[code.splitlines()[0]]()
    exec(compile(code, where, "exec"), namespace)  # noqa: S102 - the docs' own code


def test_the_readme_example_is_executed():
    assert any(w.startswith("README.md") for w, c in PYTHON_BLOCKS if c.splitlines()[0] in SETUP)


def _commands(code: str) -> list[list[str]]:
    """Each shell line (continuations joined) as argv, without comments and redirections."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        argv = shlex.split(line, comments=True)
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # leading VAR=value
            argv = argv[1:]
        if ">" in argv:
            argv = argv[: argv.index(">")]
        if argv:
            out.append(argv)
    return out


GORACS_LINES = [
    (where, argv) for where, code in SHELL_BLOCKS for argv in _commands(code) if argv[0] == "goracs"
]


def test_the_docs_show_goracs_commands():
    assert len(GORACS_LINES) >= 20
    assert {argv[1] for _, argv in GORACS_LINES} >= {
        "run", "bench", "select", "prepare", "features", "finetune", "evaluate", "config", "data"
    }  # fmt: skip


@pytest.mark.parametrize(
    ("where", "argv"), GORACS_LINES, ids=[f"{w}:{' '.join(a[1:3])}" for w, a in GORACS_LINES]
)
def test_goracs_command_parses_and_its_config_loads(where, argv):
    from goracs_ray.cli import build_parser

    try:
        args = build_parser(argv[1]).parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"{where}: `{shlex.join(argv)}` does not parse")
    config = getattr(args, "config", None)
    in_repo = bool(config) and (REPO / config).is_file()
    if args.command == "run":  # a user's own YAML stands for the defaults it was made from
        from goracs_ray.config import load_config

        load_config(REPO / config if in_repo else None, args.overrides)
    elif args.command == "bench" and in_repo:
        from goracs_ray.bench import load_bench_config

        load_bench_config(REPO / config, args.overrides)


@pytest.mark.parametrize(("where", "code"), SHELL_BLOCKS, ids=[w for w, _ in SHELL_BLOCKS])
def test_repo_paths_named_in_shell_blocks_exist(where, code):
    for argv in _commands(code):
        for token in argv:
            token = token.split("=", 1)[-1]
            if re.match(r"(jobs|benchmarks|cluster)/[\w./-]+$", token):
                assert (REPO / token).exists(), f"{where}: {token} is not in the repo"
