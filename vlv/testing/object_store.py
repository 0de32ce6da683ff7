"""An S3-compatible server on 127.0.0.1 for tests, benchmarks and the scaling walk-through (moto's server).

`S3Server` starts `moto_server` (the `moto[server]` dev dependency) on a free port outside Ray's worker range,
waits until it answers, and stops it by PID. `endpoint_env()` is what every process talking to it needs:
`AWS_ENDPOINT_URL` (read by botocore, so s3fs and boto3, and passed to pyarrow by vlv.engine.storage) plus
dummy credentials and a region, which moto accepts.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

# Ray's worker processes take ports 10002-19999; the kernel's ephemeral range (32768+) is clear of it.
_RAY_WORKER_PORTS = range(10002, 20000)


def free_port() -> int:
    """A port that was free a moment ago, outside Ray's worker port range."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in _RAY_WORKER_PORTS:
            return port
    raise RuntimeError("no free port outside Ray's worker range 10002-19999")


class S3Server:
    """`with S3Server() as s3: s3.create_bucket("b")`; `s3.endpoint` is its URL."""

    def __init__(self, port: int | None = None, log_path: Path | None = None, check_credentials: bool = False):
        self.port = port or free_port()
        # moto checks access keys against its (empty) IAM only when told to: every key is then refused.
        self.check_credentials = check_credentials
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    def endpoint_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}

    def start(self) -> S3Server:
        beside = Path(sys.executable).with_name("moto_server")  # this environment's first, then PATH's
        executable = str(beside) if beside.exists() else (shutil.which("moto_server") or str(beside))
        if not Path(executable).exists():
            raise RuntimeError("moto_server is not installed: pip install 'moto[server]' (a dev dependency)")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = {**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.check_credentials else {})}
        self._process = subprocess.Popen([executable, "-H", "127.0.0.1", "-p", str(self.port)], stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"moto_server exited with status {self._process.returncode} on port {self.port}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
                    return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within 60 s")

    def create_bucket(self, name: str) -> None:
        import fsspec

        env = self.endpoint_env()
        fs = fsspec.filesystem("s3", endpoint_url=self.endpoint, key=env["AWS_ACCESS_KEY_ID"],
                               secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        fs.mkdir(name)  # no region: us-east-1 takes no location constraint

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None

    def __enter__(self) -> S3Server:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
