"""Ports this project opens, kept out of the range Ray reserves for its worker processes.

A node started with `ray start` (a cluster node, infra/local's head) hands each worker process (every task
and actor process) a port of its own from `--min-worker-port` to `--max-worker-port`, 10002-19999 by default. A
server of ours listening on one of them takes it from under that pool: a worker handed it cannot listen on it.
`ray start` refuses such a port outright for its own services: `--ray-client-server-port=10011` fails with
"Ray component worker_ports is trying to use a port number 10011 that is used by other components". So every
port the project chooses or accepts lies outside the range, and one inside it is refused with that reason;
infra/local/lib.sh checks the scripts' ports the same way.
"""

from __future__ import annotations

import socket

RAY_MIN_WORKER_PORT = 10002
RAY_MAX_WORKER_PORT = 19999


def in_ray_worker_range(port: int) -> bool:
    return RAY_MIN_WORKER_PORT <= port <= RAY_MAX_WORKER_PORT


def check_port(port: int, setting: str, *, allow_any: bool = True) -> None:
    """ValueError for a port number that is invalid or lies in Ray's worker range, naming `setting` and the fix.

    `allow_any`: 0 means "any free port" (picked by `free_port`, which also avoids Ray's range).
    """
    low = 0 if allow_any else 1
    if not low <= port <= 65535:
        raise ValueError(f"{setting} must be in {low}..65535{' (0: any free port)' if allow_any else ''}, got {port}")
    if in_ray_worker_range(port):
        raise ValueError(
            f"{setting}={port} lies in Ray's worker port range {RAY_MIN_WORKER_PORT}-{RAY_MAX_WORKER_PORT}: Ray hands "
            f"those ports to its worker processes, and a worker given one that our server holds fails to start. "
            f"Choose a port outside it{' or 0 (any free port)' if allow_any else ''}, e.g. {port + 20000}")


def free_port(host: str = "127.0.0.1", *, attempts: int = 100) -> int:
    """A port free right now on `host` and outside Ray's worker range (for a server started just after; the
    operating system's ephemeral range may overlap Ray's, so its offers inside are skipped)."""
    for _ in range(attempts):
        with socket.socket() as probe:
            probe.bind((host, 0))
            port = probe.getsockname()[1]
        if not in_ray_worker_range(port):
            return port
    raise OSError(f"the operating system offered only ports in Ray's worker range {RAY_MIN_WORKER_PORT}-"
                  f"{RAY_MAX_WORKER_PORT} in {attempts} tries; choose a port explicitly")
