"""The embedded Ray is local and authenticated: every socket its processes listen on is loopback,
and a client without the session's token is refused."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest

from goracs_ray.raycluster import is_loopback


def _ray_processes(ray) -> list[psutil.Process]:
    """This session's Ray: the driver, the node's daemons (GCS, raylet, agents) and their
    children (workers)."""
    node = ray._private.worker._global_node
    roots = [psutil.Process(os.getpid())]
    roots += [psutil.Process(info.process.pid) for infos in node.all_processes.values()
              for info in infos if info.process.poll() is None]  # fmt: skip
    procs = {p.pid: p for r in roots for p in [r, *r.children(recursive=True)]}
    return list(procs.values())


def test_every_listening_socket_of_the_local_ray_is_loopback(ray_local):
    @ray_local.remote(num_cpus=0.25)
    class Echo:
        def ping(self) -> int:
            return os.getpid()

    @ray_local.remote(num_cpus=0.25)
    def pid() -> int:
        return os.getpid()

    actor = Echo.remote()
    worker_pids = {ray_local.get(actor.ping.remote()), *ray_local.get([pid.remote()] * 2)}
    procs = _ray_processes(ray_local)
    assert worker_pids <= {p.pid for p in procs}, "the workers were not found"
    listening = []
    for proc in procs:
        try:
            conns = proc.net_connections(kind="inet")
        except psutil.NoSuchProcess:
            continue
        listening += [(proc.name(), c.laddr.ip, c.laddr.port) for c in conns
                      if c.status == psutil.CONN_LISTEN]  # fmt: skip
    names = {name for name, _, _ in listening}
    assert {"gcs_server", "raylet"} <= names, names  # the check sees Ray's own servers
    exposed = [s for s in listening if not is_loopback(s[1])]
    assert not exposed, f"Ray listens beyond loopback: {exposed}"
    gcs_host = ray_local.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    assert gcs_host == "127.0.0.1"
    ray_local.kill(actor)


@pytest.mark.parametrize("token", [None, "not-the-token"])
def test_a_client_without_the_session_token_is_refused(ray_local, token):
    assert os.environ["RAY_AUTH_MODE"] == "token"
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_TOKEN"}
    env["HOME"] = os.environ.get("TMPDIR", "/tmp")  # no ~/.ray/auth_token to fall back on
    if token:
        env["RAY_AUTH_TOKEN"] = token
    address = ray_local.get_runtime_context().gcs_address
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED')"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert "CONNECTED" not in proc.stdout
    assert proc.returncode != 0
    assert "auth" in (proc.stdout + proc.stderr).lower()


def test_is_loopback_reads_ipv4_ipv6_and_mapped_addresses():
    assert is_loopback("127.0.0.1")
    assert is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("::")
    assert not is_loopback("192.0.2.2")
