"""End to end: `goracs run` submitted through the Ray Jobs API to a real loopback head, then the
stage cache (re-run = no-op; a new λ re-runs only selection onwards)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from goracs_ray.config import load_config
from goracs_ray.pipeline import run_pipeline
from goracs_ray.raycluster import LOOPBACK_ENV

REPO = Path(__file__).resolve().parents[2]


def _free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@contextlib.contextmanager
def loopback_head(tmp: Path):
    """`ray start --head` on loopback only, with its own ports and temp dir; stopped on exit.

    It inherits the session's token auth (tests/conftest.py): the Jobs client below passes the
    token, as a user's would."""
    ray_bin = Path(sys.executable).with_name("ray")
    gcs, dash, client, nm, om, metrics, agent_http, agent_grpc, rt_env = _free_ports(9)
    env = {
        **os.environ,
        "RAY_USAGE_STATS_ENABLED": "0",
        "HF_HUB_OFFLINE": "1",
        LOOPBACK_ENV: "0",  # the head's servers bind to 127.0.0.1 (goracs_ray.raycluster)
        # The head's workers (Ray Train's placement-group cleaner queries the state API) find
        # this head by name, not the most recent of the Rays other tests run on this machine.
        "RAY_ADDRESS": f"127.0.0.1:{gcs}",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(REPO),
    }
    temp_dir = Path("/tmp") / f"goracs_head_{os.getpid()}"  # short: socket paths have a limit
    args = [
        str(ray_bin), "start", "--head", "--node-ip-address", "127.0.0.1",
        "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--ray-client-server-port", str(client), "--node-manager-port", str(nm),
        "--object-manager-port", str(om), "--metrics-export-port", str(metrics),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc), "--runtime-env-agent-port", str(rt_env),
        "--num-cpus", "4", "--temp-dir", str(temp_dir), "--include-dashboard", "true",
        "--disable-usage-stats",
    ]  # fmt: skip
    try:
        started = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, (  # a failed start may still leave processes: stopped below
            f"ray start failed:\n{started.stdout[-2000:]}{started.stderr[-3000:]}"
        )
        yield f"http://127.0.0.1:{dash}", env
    finally:
        _stop_head(str(temp_dir), gcs)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_head(temp_dir: str, gcs_port: int) -> None:
    """Stop only this head's processes. `ray stop` would kill every Ray on the machine, the test
    session's own local Ray included (whose driver, pytest, then exits)."""
    import psutil

    def ours(proc: psutil.Process) -> bool:
        cmd = " ".join(proc.info["cmdline"] or [])
        return temp_dir in cmd or f":{gcs_port} " in cmd + " "

    roots = [p for p in psutil.process_iter(["cmdline"]) if ours(p)]
    procs = {q for p in roots for q in [p, *p.children(recursive=True)]}
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(list(procs), timeout=15)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()


@pytest.fixture(scope="module")
def submitted_run(toy_config_file, tmp_path_factory):
    """Submit `goracs run` to a fresh loopback head; return (status, logs, run_dir)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    with loopback_head(tmp_path_factory.mktemp("head")) as (address, _env):
        client = JobSubmissionClient(address)
        job = client.submit_job(
            entrypoint=f"{sys.executable} -m goracs_ray.cli run {toy_config_file}",
        )
        deadline = time.monotonic() + 900
        terminal = {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}
        while (status := client.get_job_status(job)) not in terminal:
            assert time.monotonic() < deadline, "job did not finish in 15 min"
            time.sleep(2)
        logs = client.get_job_logs(job)
    return status, logs, Path(load_config(toy_config_file).run_dir)


def test_goracs_run_through_the_jobs_api_produces_all_artifacts(submitted_run):
    from ray.job_submission import JobStatus

    status, logs, run_dir = submitted_run
    assert status == JobStatus.SUCCEEDED, logs[-3000:]
    # Default log level: the driver prints goracs_ray's lines, not Ray Data's plans and periodic
    # progress dumps. (Lines of workers on a cluster, prefixed "(Actor pid=…)", follow the
    # cluster's own logging settings; docs/usage.md, "What it prints".)
    driver = [line for line in logs.splitlines() if "pid=" not in line]
    assert any("stage features: running" in line for line in driver)
    assert not [line for line in driver if "Execution plan of Dataset" in line]
    assert "Traceback" not in logs
    manifest = json.loads((run_dir / "manifest.json").read_text())
    names = [s["name"] for s in manifest["stages"]]
    assert names == [
        "prepare", "model", "features",
        "select/goracs", "finetune/goracs", "evaluate/goracs",
        "select/random", "finetune/random", "evaluate/random",
    ]  # fmt: skip
    assert manifest["versions"]["ray"] == "2.60.0"
    for method in ("goracs", "random"):
        assert (run_dir / "finetune" / method / "adapter" / "adapter_config.json").is_file()
        metrics = json.loads((run_dir / "evaluate" / method / "metrics.json").read_text())
        assert 0.0 <= metrics["ndcg@10"] <= 1.0
        assert metrics["n"] == 4
    report = (run_dir / "results.md").read_text()
    assert "| goracs | 1 | 4 |" in report  # method, seeds, test samples
    assert "| random | 1 | 4 |" in report
    assert "| goracs | 16 |" in report  # the paired comparison against random
    assert (run_dir / "poo.png").is_file()
    assert (run_dir / "config.yaml").is_file()
    assert not list(run_dir.rglob("*.part"))


def test_rerun_is_a_no_op_and_new_lambda_reruns_only_selection_onwards(
    submitted_run, toy_config_file, ray_local
):
    status, _, run_dir = submitted_run
    assert status.value == "SUCCEEDED"
    again = run_pipeline(load_config(run_dir / "config.yaml"))
    assert all(rec.cached for rec in again.stages), [r.name for r in again.stages if not r.cached]

    from goracs_ray.pipeline import plan_run, run_arms_of

    planned = load_config(toy_config_file, ["select.lam=0.2"])
    plan = plan_run(planned, run_arms_of(planned))  # --dry-run: keys and cached/would run
    assert sorted(r.name for r in plan if not r.cached) == [
        "evaluate/goracs",
        "finetune/goracs",
        "select/goracs",
    ]
    changed = run_pipeline(load_config(toy_config_file, ["select.lam=0.2"]))
    assert {r.name: r.key for r in changed.stages} == {r.name: r.key for r in plan}
    rerun = sorted(rec.name for rec in changed.stages if not rec.cached)
    assert rerun == ["evaluate/goracs", "finetune/goracs", "select/goracs"]


def test_a_run_dir_from_an_older_format_is_refused_not_rebuilt_over(
    submitted_run, tmp_path, ray_local
):
    """A run directory whose markers the previous layout wrote (no ``format`` field, run format 1)
    is refused with one error naming its stages and the way out, before anything in it changes;
    ``force`` plans a rebuild in place."""
    from goracs_ray.pipeline import plan_run, run_arms_of
    from goracs_ray.stages import RUN_FORMAT, StaleRunDirError

    _, _, run_dir = submitted_run
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    markers = sorted(old.rglob("_stage.json"))
    assert markers
    assert all(json.loads(m.read_text())["format"] == RUN_FORMAT for m in markers)
    for m in markers:  # what the writer before the format field left
        marker = json.loads(m.read_text())
        del marker["format"]
        m.write_text(json.dumps(marker))
    before = {p: p.read_bytes() for p in old.rglob("*") if p.is_file()}
    cfg = load_config(run_dir / "config.yaml", [f"run_dir={old}"])

    message = r"run_dir .*old_run: \d+ stage\(s\) were written by an older goracs_ray"
    message += r" \(run format 1;"
    with pytest.raises(StaleRunDirError, match=message + r".*new run_dir, or rerun with --force"):
        run_pipeline(cfg)
    with pytest.raises(StaleRunDirError, match=r"evaluate/goracs/_stage\.json, .* and \d+ more"):
        plan_run(cfg, run_arms_of(cfg))  # --dry-run says the same
    assert {p: p.read_bytes() for p in old.rglob("*") if p.is_file()} == before  # untouched

    forced = plan_run(cfg, run_arms_of(cfg), force=True)
    assert forced
    assert not any(r.cached for r in forced)  # --force: every stage rebuilt in place
