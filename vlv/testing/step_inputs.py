"""Small inputs of single steps, for the step tests and the failure catalogue: LAION metadata rows, a fake
`aesthetic_filter` output (kept.parquet), a fake `caption_eval` output, and the requests that run prepare_metadata,
ingest_captions or any step through the real executor without a Ray task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from vlv.engine.executor import StepRequest, execute_step
from vlv.engine.manifest import Manifest
from vlv.engine.step import Step, StepOutput
from vlv.engine.step_output import output_of_folder
from vlv.engine.store import RunStore
from vlv.eval.eval_sets import EVAL_SETS_FILE, EvalSets
from vlv.steps.ingest_captions import IngestCaptionsConfig, IngestCaptionsStep
from vlv.steps.prepare_metadata import PrepareMetadataConfig, PrepareMetadataStep

# The image keys of the fake aesthetic_filter output: two shards of ten, img2dataset's key format.
KEPT_KEYS = [f"0000{s}{i:04d}" for s in range(2) for i in range(10)]
# The COCO image ids of the fake caption_eval output.
CAPTION_EVAL_IMAGE_IDS = (101, 102, 103, 104, 105, 106)


def laion_row(url: str = "http://a.example/1.jpg", text: str = "a dog", width: int = 800, height: int = 600,
              pwatermark: float = 0.1, punsafe: float = 0.01, **extra: Any) -> dict[str, Any]:
    """One LAION metadata row with every column LAION ships; it passes the paper's pre-filter unless changed."""
    return {"URL": url, "TEXT": text, "WIDTH": width, "HEIGHT": height, "similarity": 0.3, "hash": 7,
            "punsafe": punsafe, "pwatermark": pwatermark, "aesthetic": 6.0, **extra}


def write_parquet(path: Path, rows: list[dict[str, Any]], schema: pa.Schema | None = None) -> str:
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path)
    return str(path)


def step_request(step: Step, key: str, config: Any, store: Path, inputs: dict[str, StepOutput]) -> StepRequest:
    """The executor's request for `step` on the tiny preset, its upstream outputs given, no MLflow."""
    return StepRequest(step=step, key=key, preset="tiny", section=config,
                       upstream_keys={name: out.key for name, out in inputs.items()}, inputs=inputs,
                       store_uri=str(store), tracking_uri=None, mlflow_run_id=None, on_cluster=False)


def run_prepare_metadata(store: Path, config: PrepareMetadataConfig, key: str = "pm0") -> tuple[Manifest, Path]:
    """prepare_metadata (paper preset) through the executor: its manifest and its published folder."""
    request = StepRequest(step=PrepareMetadataStep(), key=key, preset="paper", section=config,
                          upstream_keys={}, inputs={},
                          store_uri=str(store), tracking_uri=None, mlflow_run_id=None, on_cluster=False)
    return execute_step(request), Path(RunStore(str(store)).output_uri("prepare_metadata", key))


def write_kept_output(folder: Path) -> StepOutput:
    """An aesthetic_filter output in `folder` (created): kept.parquet of KEPT_KEYS with URLs, texts and scores."""
    folder.mkdir()
    pq.write_table(pa.table({
        "key": KEPT_KEYS, "shard": [f"0000{k[4]}.tar" for k in KEPT_KEYS],
        "url": [f"http://127.0.0.1/{k}.jpg" for k in KEPT_KEYS],
        "caption": [f"LAION text of image {k}" for k in KEPT_KEYS],
        "score": pa.array([5.0 + i / 10 for i in range(len(KEPT_KEYS))], pa.float32()),
    }), folder / "kept.parquet")
    manifest = Manifest(step="aesthetic_filter", key="upkey", code_version="1", config={}, upstream={}, files=(),
                        metrics={})
    return StepOutput("aesthetic_filter", "upkey", str(folder), manifest)


def run_ingest_captions(tmp_path: Path, kept_output: StepOutput, config: IngestCaptionsConfig
                        ) -> tuple[Manifest, Path]:
    """ingest_captions through the executor into `tmp_path/store`: its manifest and its published folder."""
    store = tmp_path / "store"
    request = StepRequest(step=IngestCaptionsStep(), key="testkey", preset="tiny", section=config,
                          upstream_keys={"aesthetic_filter": "upkey"},
                          inputs={"aesthetic_filter": kept_output}, store_uri=str(store), tracking_uri=None,
                          mlflow_run_id=None, on_cluster=False)
    manifest = execute_step(request)
    return manifest, store / "steps" / "ingest_captions" / "testkey"


def fake_caption_eval(folder: Path) -> StepOutput:
    """A caption_eval output (not tiny) of six images with JPEG files, as the arena reads it."""
    images = folder / "images"
    images.mkdir(parents=True)
    ids = CAPTION_EVAL_IMAGE_IDS
    for i in ids:
        Image.new("RGB", (8, 8), (i, 40, 200)).save(images / f"COCO_val2014_{i:012d}.jpg")
    pq.write_table(pa.table({
        "image_id": pa.array(ids, pa.int64()), "file_name": [f"COCO_val2014_{i:012d}.jpg" for i in ids],
        "caption": [f"VLV caption of image {i}." for i in ids],
        "references": [[f"A reference for {i}."] for i in ids]}), folder / "captions.parquet")
    sets = EvalSets(captions_json="captions_val2014.json", images_dir=str(images), max_images=0, vqa=(), tiny=False)
    (folder / EVAL_SETS_FILE).write_text(sets.to_json())
    return output_of_folder("caption_eval", "cefake", folder)
