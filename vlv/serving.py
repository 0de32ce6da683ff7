"""The trained captioner as an MLflow model: registered as `vlv-captioner`, loaded with
`mlflow.pyfunc.load_model("models:/vlv-captioner/<version>")` and served with `mlflow models serve`.

The model is a pyfunc wrapping `vlv.inference`: its one artifact is train_stage2's self-contained captioner
folder, loaded once per process in `load_context`. A request is a table with one column, `image`, each row an
encoded image (JPEG, PNG, ...) as base64 text, the form a JSON request can carry; the answer is a table with
one column, `caption`, the same captions `vlv.inference.caption_images` gives for the same bytes. Two optional
parameters override the model's generation settings: `num_beams` and `max_new_tokens` (0: the model's own).

The model is logged "from code": MLflow stores `vlv/captioner_model_code.py` and runs it on load, rather than
unpickling an object. What the artifact does not hold: this project's code (the model imports `vlv`, so it
serves from an environment where the project is installed: `mlflow models serve --env-manager local` from its
venv), and, for a captioner trained from pretrained weights, the frozen weights its config names by path
(Florence-2, the CLIP text encoder, Qwen2.5), which must exist at those paths where it is served. The tiny
preset's captioner is rebuilt from seeds, so its artifact is complete. Nothing from the environment is written
into the artifact, so no credential can reach it.
"""

from __future__ import annotations

import base64
import binascii
import importlib.metadata
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from vlv.inference import caption_images
from vlv.models.trained_folder import load_captioner, read_captioner_config
from vlv.secrets import redact

REGISTERED_NAME = "vlv-captioner"
MODEL_ARTIFACT_PATH = "captioner_model"  # inside the train_stage2 run's artifacts
CAPTIONER_ARTIFACT = "captioner"  # the key of the captioner folder among the model's artifacts
MODEL_CODE = Path(__file__).with_name("captioner_model_code.py")
IMAGE_COLUMN = "image"
CAPTION_COLUMN = "caption"
# Third-party packages the model imports; pinned to the versions it was logged with (requirements.txt).
RUNTIME_PACKAGES = ("torch", "transformers", "tokenizers", "safetensors", "numpy", "pillow", "pandas", "mlflow")

SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", IMAGE_COLUMN)]),
    outputs=Schema([ColSpec("string", CAPTION_COLUMN)]),
    params=ParamSchema([ParamSpec("num_beams", "long", 0), ParamSpec("max_new_tokens", "long", 0)]),
)


class CaptionerModel(mlflow.pyfunc.PythonModel):
    """pyfunc flavour of a trained VLV captioner folder."""

    def load_context(self, context: Any) -> None:
        self._folder = Path(context.artifacts[CAPTIONER_ARTIFACT])
        self._captioner = load_captioner(self._folder)

    # model_input: a DataFrame (SIGNATURE's table), a hint MLflow accepts without inferring a schema from it; any
    # other hint (or none) makes MLflow warn on every import of this module.
    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        images = [image_bytes(value, index) for index, value in enumerate(_image_column(model_input))]
        params = params or {}
        captions = caption_images(images, self._folder, captioner=self._captioner,
                                  num_beams=int(params.get("num_beams") or 0) or None,
                                  max_new_tokens=int(params.get("max_new_tokens") or 0) or None)
        return pd.DataFrame({CAPTION_COLUMN: captions})


@dataclass(frozen=True)
class RegisteredCaptioner:
    name: str
    version: str
    run_id: str
    source: str  # where the model's files are (the run's artifact location)

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def log_captioner_model(client_or_tracking_uri: Any, run_id: str, captioner_folder: str | Path,
                        registered_name: str = REGISTERED_NAME) -> RegisteredCaptioner:
    """Log `captioner_folder` (train_stage2's output, a local folder) as a pyfunc model into run `run_id`'s
    artifacts and register it as a new version of `registered_name`.

    Takes a tracking URI (or an `MlflowClient`) and touches no global MLflow state: no active run, no
    `set_tracking_uri`, so the caller's runs are left as they are (the run is not reopened).
    """
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    folder = Path(captioner_folder)
    read_captioner_config(folder)  # a clear error now if this is not a captioner folder
    client = client_or_tracking_uri if isinstance(client_or_tracking_uri, MlflowClient) else \
        MlflowClient(str(client_or_tracking_uri), registry_uri=str(client_or_tracking_uri))
    run = client.get_run(run_id)
    with tempfile.TemporaryDirectory(prefix="vlv-captioner-model-") as tmp:
        local_model = Path(tmp) / MODEL_ARTIFACT_PATH
        mlflow.pyfunc.save_model(
            path=str(local_model), python_model=str(MODEL_CODE), artifacts={CAPTIONER_ARTIFACT: str(folder)},
            signature=SIGNATURE, input_example=pd.DataFrame({IMAGE_COLUMN: [example_image_base64()]}),
            pip_requirements=runtime_requirements(),
        )
        client.log_artifacts(run_id, str(local_model), MODEL_ARTIFACT_PATH)
    try:
        client.create_registered_model(registered_name, description=(
            "VLV captioner (train_stage2): base64 images in column 'image' -> column 'caption'"))
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    source = f"{run.info.artifact_uri.rstrip('/')}/{MODEL_ARTIFACT_PATH}"
    version = client.create_model_version(registered_name, source=source, run_id=run_id,
                                          tags={"vlv.captioner_folder": redact(str(folder))})
    return RegisteredCaptioner(registered_name, str(version.version), run_id, source)


def image_bytes(value: Any, index: int = 0) -> bytes:
    """One request row -> encoded image bytes (base64 text, or bytes as they are)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str) or not value:
        raise ValueError(f"row {index} of column '{IMAGE_COLUMN}' must be a base64-encoded image, got "
                         f"{type(value).__name__}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"row {index} of column '{IMAGE_COLUMN}' is not valid base64 (encode the image file's "
                         f"bytes, e.g. base64.b64encode(open(path, 'rb').read()).decode())") from None


def encode_image_file(path: str | Path) -> str:
    """What a client sends for one image file."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


def example_image_base64(side: int = 64) -> str:
    """A small real photo (scikit-image's astronaut, bundled: nothing is downloaded) as the input example."""
    import io

    import skimage.data
    from PIL import Image

    image = Image.fromarray(np.asarray(skimage.data.astronaut(), dtype=np.uint8)).resize((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def runtime_requirements() -> list[str]:
    """Pinned requirements of what the model imports (given, so MLflow does not load the model to infer them)."""
    pinned = []
    for package in RUNTIME_PACKAGES:
        try:
            pinned.append(f"{package}=={importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            continue
    return pinned


def _image_column(model_input: Any) -> list[Any]:
    if isinstance(model_input, pd.DataFrame):
        if IMAGE_COLUMN not in model_input.columns:
            raise ValueError(f"the input needs a column '{IMAGE_COLUMN}' of base64-encoded images, got columns "
                             f"{list(model_input.columns)}")
        return model_input[IMAGE_COLUMN].tolist()
    if isinstance(model_input, dict) and IMAGE_COLUMN in model_input:
        values = model_input[IMAGE_COLUMN]
        return list(values) if isinstance(values, (list, tuple, np.ndarray, pd.Series)) else [values]
    raise ValueError(f"the input must be a table with a column '{IMAGE_COLUMN}' of base64-encoded images, got "
                     f"{type(model_input).__name__}")
