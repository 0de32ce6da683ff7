"""The captioner in the MLflow model registry: logged and registered from a captioner folder, loaded back through
`models:/vlv-captioner/<version>`, and (slow) served by `mlflow models serve` on 127.0.0.1."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from PIL import Image
from safetensors.torch import load_file, save_file

from vlv.inference import caption_images
from vlv.ports import free_port, in_ray_worker_range
from vlv.serving import (
    CAPTION_COLUMN,
    IMAGE_COLUMN,
    MODEL_ARTIFACT_PATH,
    REGISTERED_NAME,
    SIGNATURE,
    encode_image_file,
    example_image_base64,
    image_bytes,
    log_captioner_model,
)
from vlv.testing.builders import write_captioner_folder, write_stage1_folder
from vlv.testing.fake_secrets import FAKE_SECRETS

SERVE_READY_DEADLINE_S = 600  # a bound against a hung server, not a speed requirement


@pytest.fixture(scope="module")
def captioner_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("captioner")
    (root / "stage1").mkdir()
    (root / "captioner").mkdir()
    write_stage1_folder(root / "stage1")
    write_captioner_folder(root / "captioner", root / "stage1")
    # Untrained, the tiny captioner says the same for every photo; weights 10x larger make its captions depend
    # on the image, so a request that reached the model with the wrong pixels would give another caption.
    weights = root / "captioner" / "captioner_trainable.safetensors"
    save_file({name: (tensor * 10).contiguous() for name, tensor in load_file(str(weights)).items()}, str(weights))
    return root / "captioner"


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> list[Path]:
    """Real photos as files a user would send: scikit-image's astronaut (JPEG) and cat (PNG)."""
    import skimage.data

    root = tmp_path_factory.mktemp("photos")
    astronaut, chelsea = root / "astronaut.jpg", root / "chelsea.png"
    Image.fromarray(skimage.data.astronaut()).save(astronaut, quality=92)
    Image.fromarray(skimage.data.chelsea()).save(chelsea)
    return [astronaut, chelsea]


@pytest.fixture(scope="module")
def registry(tmp_path_factory, captioner_folder):
    """A SQLite tracking store with one run (as train_stage2's) that the captioner is registered from."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("vlv", artifact_location=str(root / "artifacts"))
    run_id = client.create_run(experiment, run_name="train_stage2").info.run_id
    client.set_terminated(run_id, "FINISHED")
    registered = log_captioner_model(uri, run_id, captioner_folder)
    return uri, root, run_id, registered


def test_registered_model_loads_through_models_uri_and_captions_as_inference_does(registry, captioner_folder,
                                                                                  photos, monkeypatch):
    uri, _, run_id, registered = registry
    assert (registered.name, registered.version, registered.model_uri) == (REGISTERED_NAME, "1",
                                                                          "models:/vlv-captioner/1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(registered.model_uri)
    direct = caption_images(photos, captioner_folder)
    assert any(direct) and direct[0] != direct[1]  # distinct captions: a comparison that can fail
    frame = pd.DataFrame({IMAGE_COLUMN: [encode_image_file(p) for p in photos]})
    assert model.predict(frame)[CAPTION_COLUMN].tolist() == direct
    single = model.predict(frame.iloc[:1], params={"num_beams": 1, "max_new_tokens": 5})
    assert single[CAPTION_COLUMN].tolist() == caption_images(photos[:1], captioner_folder, num_beams=1,
                                                             max_new_tokens=5)
    run = MlflowClient(uri).get_run(run_id)
    assert run.info.status == "FINISHED"  # the step's run is not reopened


def test_model_has_signature_input_example_and_pinned_requirements(registry, monkeypatch):
    uri, root, run_id, registered = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    info = mlflow.models.get_model_info(registered.model_uri)
    assert info.signature == SIGNATURE
    flavor = info.flavors["python_function"]  # a model from code (a file run on load), not a pickle
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "captioner_model_code.py" in str(flavor)
    assert info.saved_input_example_info is not None
    model_dir = root / "artifacts" / run_id / "artifacts" / MODEL_ARTIFACT_PATH
    example = json.loads((model_dir / "serving_input_example.json").read_text())
    assert example["dataframe_split"]["columns"] == [IMAGE_COLUMN]
    requirements = (model_dir / "requirements.txt").read_text().split()
    assert any(r.startswith("torch==") for r in requirements) and any(r.startswith("mlflow==") for r in requirements)
    assert sorted(p.name for p in (model_dir / "artifacts" / "captioner").iterdir()) == [
        "captioner_model.json", "captioner_trainable.safetensors", "stage1_model.json",
        "stage1_trainable.safetensors", "tokenizer"]


def test_model_artifacts_hold_no_credential_of_the_environment(registry):
    _, root, _, _ = registry
    assert all(value in os.environ.values() for value in FAKE_SECRETS.values())  # set by tests/conftest.py
    files = [p for p in (root / "artifacts").rglob("*") if p.is_file()]
    assert len(files) > 8
    for path in files:
        data = path.read_bytes()
        leaked = [name for name, value in FAKE_SECRETS.items() if value.encode() in data]
        assert not leaked, f"{path} holds {leaked}"


def test_a_second_registration_is_a_new_version(registry, captioner_folder):
    uri, _, run_id, _ = registry
    again = log_captioner_model(MlflowClient(uri), run_id, captioner_folder)
    assert again.version == "2" and again.model_uri == "models:/vlv-captioner/2"


def test_bad_requests_and_folders_are_clear_errors(registry, tmp_path, monkeypatch):
    uri, _, run_id, registered = registry
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = mlflow.pyfunc.load_model(registered.model_uri)
    with pytest.raises(Exception, match="row 0 of column 'image' is not valid base64"):
        model.predict(pd.DataFrame({IMAGE_COLUMN: ["not base64!"]}))
    with pytest.raises(Exception, match="not a decodable image"):
        model.predict(pd.DataFrame({IMAGE_COLUMN: ["aGVsbG8="]}))  # "hello"
    with pytest.raises(ValueError, match="is not a trained VLV model folder: captioner_model.json is missing"):
        log_captioner_model(uri, run_id, tmp_path)


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_direct_caption(registry, captioner_folder, photos, tmp_path):
    """`mlflow models serve --env-manager local` on 127.0.0.1; prints how long it took to answer /ping."""
    uri, _, _, registered = registry
    port = free_port()
    assert not in_ray_worker_range(port)
    venv_bin = Path(sys.executable).parent  # mlflow starts `uvicorn` by name: the venv's must come first
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    mlflow_cli = venv_bin / "mlflow"
    log = open(tmp_path / "serve.log", "w")
    started = time.monotonic()
    server = subprocess.Popen(
        [str(mlflow_cli), "models", "serve", "-m", registered.model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ready_s = _wait_until_answering(f"http://127.0.0.1:{port}/ping", server, started, tmp_path / "serve.log")
        body = json.dumps({"dataframe_split": {"columns": [IMAGE_COLUMN], "data": [[encode_image_file(photos[0])]]}})
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                         headers={"Content-Type": "application/json"})
        sent = time.monotonic()
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
        first_request_s = time.monotonic() - sent
        print(f"\nmlflow models serve: answering /ping {ready_s:.1f}s after start; first /invocations "
              f"{first_request_s:.2f}s")
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # our own server's process group (uvicorn and its worker)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
        log.close()
    assert answer == {"predictions": [{CAPTION_COLUMN: caption_images(photos[:1], captioner_folder)[0]}]}


def _wait_until_answering(url: str, server: subprocess.Popen, started: float, log: Path) -> float:
    while time.monotonic() - started < SERVE_READY_DEADLINE_S:
        if server.poll() is not None:
            raise AssertionError(f"mlflow models serve exited with {server.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"mlflow models serve did not answer within {SERVE_READY_DEADLINE_S}s: "
                         f"{log.read_text()[-3000:]}")


def test_input_example_is_a_real_photo():
    with Image.open(io.BytesIO(image_bytes(example_image_base64()))) as image:
        assert image.size == (64, 64) and np.asarray(image).std() > 10
