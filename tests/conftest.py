"""Shared fixtures: one Ray instance for the whole session, and one tiny and one paper_mini pipeline run shared by
the end-to-end tests."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from vlv.logs import set_quiet_environment
from vlv.runtime_env import apply_runtime_defaults
from vlv.testing.fake_secrets import FAKE_SECRETS
from vlv.testing.object_store import GcsServer, S3Server, free_port
from vlv.testing.step_inputs import write_kept_output

os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("RAY_ADDRESS", None)
os.environ.pop("VLV_STORE", None)

# Fake credentials, set before Ray starts so every worker inherits them too (see vlv.testing.fake_secrets).
os.environ.update(FAKE_SECRETS)

# The S3-compatible test server's endpoint, set before Ray starts so every worker talks to it too (the server
# itself starts on first use: fixture `s3_server`). botocore, hence s3fs and boto3, reads AWS_ENDPOINT_URL.
S3_PORT = free_port()
os.environ["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{S3_PORT}"
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.pop("AWS_ENDPOINT_URL_S3", None)
# Likewise the GCS emulator (fixture `gcs_server`): gcsfs and google-cloud-storage read STORAGE_EMULATOR_HOST.
GCS_PORT = free_port()
os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{GCS_PORT}"
apply_runtime_defaults()  # after the endpoints: some defaults depend on them


@pytest.fixture
def kept_output(tmp_path):
    """A fake aesthetic_filter output: kept.parquet of `vlv.testing.step_inputs.KEPT_KEYS` (ingest_captions' input)."""
    return write_kept_output(tmp_path / "aesthetic_filter")


@pytest.fixture(scope="session")
def ray_session():
    """An embedded Ray for the session; steps run as Ray tasks on it."""
    import ray

    if not ray.is_initialized():
        set_quiet_environment()  # before Ray starts, as the pipeline's entry points do: its workers inherit it
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=True, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_store(ray_session, tmp_path_factory) -> Path:
    """The whole tiny pipeline, run once through the CLI entry point; its console is kept beside the store."""
    return _run_pipeline("tiny", tmp_path_factory.mktemp("tiny_run"))


@pytest.fixture(scope="session")
def paper_mini_assets():
    """The paper_mini models and data: built once per machine (`$VLV_PAPER_MINI_DIR` or ~/.cache/vlv/paper_mini)."""
    from vlv.paper_mini.build import ensure_paper_mini_assets

    return ensure_paper_mini_assets()


@pytest.fixture(scope="session")
def paper_mini_store(ray_session, paper_mini_assets, tmp_path_factory) -> Path:
    """The whole paper_mini pipeline, run once through the CLI entry point (assets already built)."""
    return _run_pipeline("paper_mini", tmp_path_factory.mktemp("paper_mini_run"))


def _run_pipeline(preset: str, root: Path) -> Path:
    """Run `pipelines/full_run.py --preset <preset>` into `root/store`. Beside the store: driver.log, the whole
    console as a user sees it (log lines, the lines Ray forwards from its workers, the printed summary), and
    the wall seconds."""
    from pipelines import full_run
    from vlv.logs import LOG_FORMAT

    with open(root / "driver.log", "w", encoding="utf-8") as console:
        handler = logging.StreamHandler(console)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        root_logger = logging.getLogger()
        level = root_logger.level
        root_logger.addHandler(handler)
        root_logger.setLevel(logging.INFO)  # pytest's own handlers are already there, so basicConfig sets nothing
        started = time.monotonic()
        try:
            # Ray prints its workers' lines to whatever sys.stderr / sys.stdout is when they arrive.
            with contextlib.redirect_stderr(console), contextlib.redirect_stdout(console):
                assert full_run.main(["--preset", preset, "--store", str(root / "store")]) == 0
        finally:
            root_logger.removeHandler(handler)
            root_logger.setLevel(level)
    (root / "seconds.txt").write_text(f"{time.monotonic() - started:.1f}\n")
    return root / "store"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on 127.0.0.1 for the session (the endpoint every process already has in its env)."""
    with S3Server(port=S3_PORT, log_path=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def s3_bucket(s3_server, request) -> str:
    """A fresh, empty bucket for one test; returns its name."""
    return _new_bucket(s3_server, request)


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory):
    """fake-gcs-server on 127.0.0.1 for the session (the endpoint every process already has in its env)."""
    with GcsServer(port=GCS_PORT, log_path=tmp_path_factory.mktemp("fake_gcs") / "fake-gcs-server.log") as server:
        yield server


@pytest.fixture
def gcs_bucket(gcs_server, request) -> str:
    """A fresh, empty GCS bucket for one test; returns its name."""
    return _new_bucket(gcs_server, request)


@pytest.fixture(params=["s3", "gs"])
def bucket_uri(request) -> str:
    """A fresh, empty bucket on each object store the tests run (moto's S3, fake-gcs-server): `s3://b`, `gs://b`."""
    bucket = request.getfixturevalue("s3_bucket" if request.param == "s3" else "gcs_bucket")
    return f"{request.param}://{bucket}"


def _new_bucket(server: S3Server | GcsServer, request) -> str:
    """A bucket named after the test (and unique), created on `server`."""
    name = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower())[:48].strip("-") + f"-{uuid.uuid4().hex[:8]}"
    server.create_bucket(name)
    return name
