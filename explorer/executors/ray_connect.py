"""Connecting to Ray: a missing package or an unreachable cluster is one readable line.

``ray.init`` at an address nobody listens on retries for minutes, printing a log line every
few seconds; so an explicit ``host:port`` is first probed with a plain TCP connect (3 s).
"""
from __future__ import annotations

import logging
import socket
from typing import Any

from .base import ExecutorError

log = logging.getLogger(__name__)
PROBE_TIMEOUT_S = 3.0


def import_ray() -> Any:
    """The ``ray`` module, or ``ExecutorError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ExecutorError("the Ray executor needs the `ray` package: pip install -r requirements.txt "
                            f"(or pip install 'ray>=2.40,<3'); import failed: {exc}") from None
    return ray


def split_address(address: str) -> tuple[str, int] | None:
    """``host:port`` (optionally ``ray://``-prefixed) -> (host, port); None for ``auto``/``local``."""
    text = address.strip()
    if text in ("auto", "local"):
        return None
    text = text.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379), "
                            "ray://host:port or auto")
    return host.strip("[]"), int(port)


def probe(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Raise ``ExecutorError`` unless something accepts TCP connections at ``address``."""
    hostport = split_address(address)
    if hostport is None:
        return
    try:
        with socket.create_connection(hostport, timeout=timeout_s):
            pass
    except OSError as exc:
        raise ExecutorError(f"cannot reach a Ray cluster at {address} ({exc.strerror or exc}); "
                            "start one with `ray start --head`, or give no address to start Ray here") from None


def connect(ray: Any, address: str | None, workers: int | None, threads: int) -> bool:
    """Join the cluster at ``address`` or start a local Ray; True when this call started Ray.

    An already initialised Ray (a test's, an app's) is reused as it is. A local start gets
    ``workers * threads`` CPUs when ``workers`` is given, the machine's otherwise.
    """
    if address:
        probe(address)
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                              "logging_level": logging.WARNING}
    if address:
        kwargs["address"] = address
    else:
        kwargs["address"] = "local"
        if workers:
            kwargs["num_cpus"] = workers * max(1, threads)
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        why = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        if not address:
            raise ExecutorError(f"cannot start a local Ray: {why}") from None
        # Ray >= 2.59 clusters started by `ray start` check a token; a driver without it is refused.
        raise ExecutorError(f"cannot join the Ray cluster at {address}: {why} (a cluster with token "
                            "authentication needs RAY_AUTH_MODE=token and its token here: see README)") from None
    log.info("Ray: %s", ray.cluster_resources())
    return True
