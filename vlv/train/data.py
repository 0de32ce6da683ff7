"""Streaming training batches from the download step's webdataset shards.

Which samples: a "samples" parquet with `key` and `shard` columns (the tar file name, e.g. "00000.tar"):
`kept.parquet` of `aesthetic_filter` for stage 1, `captions.parquet` of `ingest_captions` (plus `caption`) for
stage 2. Only the per-shard counts are held for the whole set; a shard's keys (and captions) are read when that
shard is opened, its images one by one from the tar. Nothing holds the dataset in memory.

Order (a pure function of seed, epoch, rank and world size, so a resumed run sees the same batches):
- each epoch the shard list is permuted with a seeded RNG and dealt round-robin to ranks: the ranks read
  disjoint shards, each tar is read by one worker only;
- within a shard, samples pass through a seeded shuffle buffer (raw bytes; images are decoded on the way out);
- epochs follow one another without a break, so every rank's stream is endless and training is counted in
  steps: ranks with more samples per epoch simply wrap later.
Resuming at micro-batch K skips whole shards by their counts and the rest of a shard without decoding.

A cap (`max_images`) trains on a fixed, nested subset of the listed samples (see vlv.train.image_subset): the
per-shard counts are the subset's and a shard's keys are filtered when it is opened; the order rules above apply
to what remains.
"""

from __future__ import annotations

import itertools
import random
import tarfile
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterator

import numpy as np

from vlv.models.image_files import decode_image
from vlv.paths import child_uri
from vlv.train.image_subset import ImageSubset, select_images

if TYPE_CHECKING:  # torch is imported where batches are made
    import torch

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


@dataclass(frozen=True)
class ShardEntry:
    name: str  # tar file name, as in the samples parquet's `shard` column
    num_samples: int


@dataclass
class ImageBatch:
    keys: list[str]
    images: torch.Tensor  # uint8 (B, image_size, image_size, 3), what vlv.models expects
    captions: list[str] | None = None


@dataclass(frozen=True)
class ImageStreamConfig:
    image_size: int = 384  # images not already this square size are resized (shorter side) and centre-cropped
    shuffle_buffer: int = 256  # samples; 0 or 1 keeps tar order
    seed: int = 0
    max_images: int | None = None  # train on this many of the listed samples (a seeded, nested subset); None: all

    def __post_init__(self) -> None:
        if self.max_images is not None and self.max_images < 1:
            raise ValueError(f"data.max_images must be >= 1 or None (every listed image), got {self.max_images}")
        if self.image_size <= 0:
            raise ValueError(f"data.image_size must be > 0, got {self.image_size}")
        if self.shuffle_buffer < 0:
            raise ValueError(f"data.shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


@dataclass(frozen=True)
class WebDatasetImageStream:
    """Endless, disjoint-per-rank, resumable batches of images (and captions) from webdataset tars.

    Picklable and cheap to ship to Ray Train workers: it holds paths, not data.
    """

    shards_uri: str  # the download step's `shards/` folder (local path or fsspec URI)
    samples_uri: str  # kept.parquet (stage 1) or captions.parquet (stage 2)
    config: ImageStreamConfig = ImageStreamConfig()
    with_captions: bool = False

    # -- the plan ------------------------------------------------------------------------------------------

    def shard_entries(self) -> list[ShardEntry]:
        """Every shard with at least one listed sample, sorted by name (one column read, counts only)."""
        import pyarrow.compute as pc

        subset = self.image_subset()
        if subset is not None:
            if not subset.used:
                raise ValueError(f"{self.samples_uri} lists no samples; the upstream step kept nothing to train on")
            return [ShardEntry(name, count) for name, count in subset.shard_counts]
        table = self._read_samples(columns=["shard"])
        counts = pc.value_counts(table.column("shard").combine_chunks()).to_pylist()
        entries = sorted((ShardEntry(str(c["values"]), int(c["counts"])) for c in counts), key=lambda e: e.name)
        if not entries:
            raise ValueError(f"{self.samples_uri} lists no samples; the upstream step kept nothing to train on")
        return entries

    def epoch_shards(self, entries: list[ShardEntry], *, epoch: int, rank: int, world_size: int
                     ) -> list[ShardEntry]:
        """This rank's shards for one epoch, in reading order."""
        if world_size <= 0 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} workers")
        if len(entries) < world_size:
            raise ValueError(
                f"{len(entries)} shards cannot be split over {world_size} workers so that each reads different "
                f"images; use fewer workers or a smaller download.samples_per_shard (more, smaller shards)"
            )
        order = list(entries)
        random.Random(f"{self.config.seed}:epoch:{epoch}").shuffle(order)
        return order[rank::world_size]

    def image_subset(self) -> ImageSubset | None:
        """The samples a cap of `config.max_images` keeps (None without a cap): computed on first use, then
        held by this object, so a stream prepared on the driver ships it to the workers with itself."""
        if self.config.max_images is None:
            return None
        subset = self.__dict__.get("_image_subset")
        if subset is None:
            self._check_columns()
            subset = select_images(self.samples_uri, self.config.max_images, self.config.seed)
            object.__setattr__(self, "_image_subset", subset)  # a cache, not a field: equality is unchanged
        return subset

    # -- the stream ----------------------------------------------------------------------------------------

    def batches(self, *, rank: int, world_size: int, batch_size: int, start_batch: int = 0
                ) -> Iterator[ImageBatch]:
        """Micro-batches of `batch_size` from micro-batch `start_batch` on (the TrainTask protocol)."""
        if batch_size <= 0 or start_batch < 0:
            raise ValueError(f"batch_size must be > 0 and start_batch >= 0, got {batch_size}, {start_batch}")
        samples = self.samples(rank=rank, world_size=world_size, start_sample=start_batch * batch_size)
        while True:
            chunk = list(itertools.islice(samples, batch_size))
            yield self._collate(chunk)

    def samples(self, *, rank: int, world_size: int, start_sample: int = 0
                ) -> Iterator[tuple[str, np.ndarray, str | None]]:
        """(key, uint8 HxWx3 image, caption or None), endless, from this rank's sample `start_sample` on."""
        entries = self.shard_entries()
        to_skip = start_sample
        for epoch in itertools.count():
            for entry in self.epoch_shards(entries, epoch=epoch, rank=rank, world_size=world_size):
                if to_skip >= entry.num_samples:
                    to_skip -= entry.num_samples
                    continue
                for index, (key, raw, caption) in enumerate(self._shard_samples(entry, epoch)):
                    if index >= to_skip:
                        yield key, decode_image(raw, self.config.image_size, key), caption
                to_skip = 0

    # -- one shard -----------------------------------------------------------------------------------------

    def _shard_samples(self, entry: ShardEntry, epoch: int) -> Iterator[tuple[str, bytes, str | None]]:
        """The shard's listed samples as raw bytes, shuffled by a buffer seeded per (seed, epoch, shard)."""
        wanted = self._shard_index(entry.name)
        rng = random.Random(f"{self.config.seed}:epoch:{epoch}:{entry.name}")
        buffer: list[tuple[str, bytes, str | None]] = []
        produced = 0
        for key, raw in self._read_tar_images(entry.name, set(wanted)):
            item = (key, raw, wanted[key])
            if self.config.shuffle_buffer <= 1:
                produced += 1
                yield item
                continue
            if len(buffer) < self.config.shuffle_buffer:
                buffer.append(item)
                continue
            slot = rng.randrange(len(buffer))
            buffer[slot], item = item, buffer[slot]
            produced += 1
            yield item
        rng.shuffle(buffer)
        for item in buffer:
            produced += 1
            yield item
        if produced != entry.num_samples:
            raise ValueError(
                f"shard {entry.name} holds {produced} of the {entry.num_samples} samples {self.samples_uri} lists "
                f"for it (missing or duplicated keys); the samples file and the shards must come from the same "
                f"download: rerun the steps after `download` (e.g. --from aesthetic_filter)"
            )

    def _shard_index(self, shard: str) -> dict[str, str | None]:
        """key -> caption (None for stage 1) for the listed samples of one shard."""
        import pyarrow.compute as pc

        columns = ["key", "shard"] + (["caption"] if self.with_captions else [])
        table = self._read_samples(columns=columns, shard=shard)
        table = table.filter(pc.equal(table.column("shard"), shard))
        keys = [str(k) for k in table.column("key").to_pylist()]
        captions = table.column("caption").to_pylist() if self.with_captions else [None] * len(keys)
        subset = self.image_subset()
        if subset is not None:
            inside = subset.contains(keys)
            keys = [k for k, keep in zip(keys, inside) if keep]
            captions = [c for c, keep in zip(captions, inside) if keep]
        if self.with_captions and any(c is None or not str(c).strip() for c in captions):
            raise ValueError(f"{self.samples_uri} has empty captions for shard {shard}; captions.parquet of "
                             f"ingest_captions never holds those, so the file is not its output")
        return dict(zip(keys, captions))

    def _read_tar_images(self, shard: str, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        """(key, encoded image bytes) for members whose key is wanted, in tar order, streaming."""
        import fsspec

        url = child_uri(self.shards_uri, shard, f"shard name in {self.samples_uri}", single=True)
        try:
            handle = fsspec.open(url, "rb").open()
        except FileNotFoundError:
            raise ValueError(f"shard {shard} listed in {self.samples_uri} is missing from {self.shards_uri}; "
                             f"rerun the `download` step and everything after it") from None
        with handle, tarfile.open(fileobj=handle, mode="r|*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                key, _, extension = base.partition(".")
                if extension.lower() not in IMAGE_EXTENSIONS or key not in wanted:
                    continue
                extracted = tar.extractfile(member)
                assert extracted is not None
                yield key, extracted.read()

    def _read_samples(self, columns: list[str], shard: str | None = None):
        import pyarrow.parquet as pq

        self._check_columns()
        filters = [("shard", "=", shard)] if shard is not None else None
        return pq.read_table(self.samples_uri, columns=columns, filters=filters)

    def _check_columns(self) -> None:
        import pyarrow.parquet as pq

        schema = pq.read_schema(self.samples_uri)
        needed = ["key", "shard"] + (["caption"] if self.with_captions else [])
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise ValueError(f"{self.samples_uri} lacks column(s) {missing}; expected the {needed} columns of "
                             f"aesthetic_filter's kept.parquet (stage 1) or ingest_captions' captions.parquet")

    def _collate(self, chunk: list[tuple[str, np.ndarray, str | None]]) -> ImageBatch:
        import torch

        images = torch.from_numpy(np.stack([image for _, image, _ in chunk]))
        captions = [str(c) for _, _, c in chunk] if self.with_captions else None
        return ImageBatch(keys=[k for k, _, _ in chunk], images=images, captions=captions)
