"""Connect to Ray: an existing cluster when one is given or running, else an embedded local one.

The only module besides the Ray shells (``features/actors.py``, ``select/distributed.py``,
``train/``) that imports ray.

The embedded Ray is local in the network sense too: every one of its servers (GCS, raylet,
object manager, workers, dashboard agent, runtime-env agent) listens on 127.0.0.1 only, and Ray's
token authentication stays as Ray sets it (on by default since Ray 2.52; the token is in
``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``). See docs/operations.md, "Security model".
"""

from __future__ import annotations

import logging
import os

__all__ = ["LOOPBACK_ENV", "ensure_ray", "is_loopback"]

logger = logging.getLogger(__name__)

#: Ray's own switch (meant for macOS and Windows, read on Linux too): "0" makes a local Ray take
#: 127.0.0.1 as its node address, and its servers then bind to loopback only. Without it Ray
#: replaces a requested ``_node_ip_address="127.0.0.1"`` by the machine's routable address and
#: listens on every interface. Set it to "1" to open the embedded Ray to other machines.
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an IP, optionally IPv4-mapped IPv6) is a loopback address."""
    import ipaddress

    addr = ipaddress.ip_address(host.split("%")[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (bound a moment later: a GCS, a torch.distributed
    rendezvous)."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _ray_log_level() -> int:
    """Ray's driver log level: INFO when goracs_ray logs at DEBUG (``goracs -v``), else WARNING."""
    return logging.INFO if logger.isEnabledFor(logging.DEBUG) else logging.WARNING


def ensure_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Initialise Ray once per process.

    Parameters
    ----------
    address : str, optional
        ``"auto"``, ``"ray://host:10001"`` or a GCS address to join a running cluster. ``None``
        joins the cluster named by ``RAY_ADDRESS`` (set by ``ray job submit``) or else starts an
        embedded local Ray that listens on 127.0.0.1 only (unless
        ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=1`` is set, which opens it to the network).
    num_cpus : int, optional
        Logical CPUs of the local Ray (ignored when joining a cluster). Default: max(4, cores), so
        fractional-CPU actors and Ray Data read tasks do not starve each other on small machines.
    """
    address = address or os.environ.get("RAY_ADDRESS")
    loopback = address is None and os.environ.setdefault(LOOPBACK_ENV, "0") == "0"
    import ray

    if ray.is_initialized():
        return
    if address:
        logger.info("joining Ray cluster at %s", address)
        ray.init(address=address, logging_level=_ray_log_level())
        return
    if loopback:
        # Ray reads LOOPBACK_ENV once, when ray is first imported. A process that imported ray
        # before this call (a user's script, a Ray shell module) has the old value cached.
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = False
    cpus = num_cpus or max(4, os.cpu_count() or 1)
    logger.info("starting a local Ray with %d logical CPUs", cpus)
    # The Ray processes (raylet, then every worker) inherit this environment. Ray Train's
    # placement-group cleaner finds "its" cluster through the state API by RAY_ADDRESS, else by
    # the machine's most recently started Ray, which may be another one: so the GCS gets a port
    # chosen here, and RAY_ADDRESS names it for the workers only (the driver's copy is restored).
    node_env = {}
    if loopback:
        port = free_port()
        node_env = {"RAY_GCS_SERVER_PORT": str(port), "RAY_ADDRESS": f"127.0.0.1:{port}"}
    saved = {name: os.environ.get(name) for name in node_env}
    os.environ.update(node_env)
    try:
        ray.init(
            address="local",  # a new Ray, even when a `ray start` cluster runs on this machine
            num_cpus=cpus,
            # Ray Train's controller queries the state API, which the dashboard serves; it
            # listens on loopback like everything else.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            logging_level=_ray_log_level(),
            _node_ip_address="127.0.0.1",
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    host = ray.get_runtime_context().gcs_address.rsplit(":", 1)[0]
    if loopback and not is_loopback(host):
        logger.warning(
            "the local Ray listens on %s, not on loopback only: other machines can reach it "
            "(protected by Ray's token auth unless RAY_AUTH_MODE=disabled)",
            host,
        )
