"""The `tiny` data source: a LAION-format set of real photos, served over loopback HTTP.

The photos are the colour (and a few black-and-white) photographs that scikit-image bundles, plus seeded
crops, flips, rescales and colour shifts of them, so the real download path (HTTP, decode, resize, shard)
runs offline. Every site also carries broken rows, so the failure paths run on every tiny run: URLs that
404, a JPEG cut before its image data, an HTML page served as image/jpeg, a photo whose server opts out of AI
use (X-Robots-Tag: noai), and rows the pre-filter must drop (too small, bad aspect ratio, watermarked,
duplicate URL).

The data names the photos by canonical URLs on a host that never resolves (`.invalid` is reserved for that), not
by where they happen to be served: the site is served on any free port (or a chosen one) only while a step
fetches from it, and that step maps the URLs to the served address on the way in and back on the way out. So
the metadata, the shards and every table after them are the same bytes whatever the port, and two tiny
pipelines can run on one machine at once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import ipaddress
import logging
import re
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
from PIL import Image, ImageEnhance, ImageOps

from vlv.data.img2dataset_runner import UrlRewrite
from vlv.data.laion import CANONICAL_SCHEMA, MetadataFilter
from vlv.ports import check_port, in_ray_worker_range

log = logging.getLogger("vlv.data.loopback_site")

OPT_OUT_FOLDER = "opt_out"  # files below it are served with `X-Robots-Tag: noai`
MAX_ASPECT = 1.5  # photos are at most 3:2 (or 2:3), so their shorter side is >= image_side / 1.5
CANONICAL_BASE_URL = "http://tiny-site.invalid"  # what every URL in the data starts with
SERVE_HOST = "127.0.0.1"
# Any served address (this run's port or a crashed attempt's): what canonical_urls() maps back.
_SERVED_BASE_PATTERN = r"^http://127\.0\.0\.1:[0-9]+/"


@dataclass(frozen=True)
class PhotoSource:
    name: str
    load: Callable[[], np.ndarray]
    captions: tuple[str, ...]
    monochrome: bool = False


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        image = getattr(skimage.data, name)()
        return image[0] if name == "stereo_motorcycle" else image
    return load


# Bundled with scikit-image (no download); the captions describe what the photos show, as alt texts do.
PHOTO_SOURCES: tuple[PhotoSource, ...] = (
    PhotoSource("astronaut", _skimage("astronaut"), (
        "Astronaut Eileen Collins in an orange flight suit posing in front of the American flag",
        "Portrait of a smiling NASA astronaut holding a helmet")),
    PhotoSource("chelsea", _skimage("chelsea"), (
        "A ginger tabby cat looking to the side", "Tabby cat with green eyes sitting indoors")),
    PhotoSource("coffee", _skimage("coffee"), (
        "A cup of coffee on a saucer with a spoon on a wooden table", "Cappuccino in a white cup, top view")),
    PhotoSource("rocket", _skimage("rocket"), (
        "SpaceX Falcon 9 rocket standing on the launch pad under a blue sky",
        "A rocket on its launch tower before lift-off")),
    PhotoSource("motorcycle", _skimage("stereo_motorcycle"), (
        "A red motorcycle parked in a workshop full of tools and boxes", "Sport motorbike in a garage")),
    PhotoSource("hubble_deep_field", _skimage("hubble_deep_field"), (
        "Hubble deep field: hundreds of distant galaxies", "Galaxies scattered across black space")),
    PhotoSource("immunohistochemistry", _skimage("immunohistochemistry"), (
        "Microscope image of a tissue section stained brown and blue",
        "Immunohistochemistry slide of human cells under a microscope")),
    PhotoSource("retina", _skimage("retina"), (
        "Fundus photograph of a human retina with the optic disc and blood vessels",
        "Orange eye fundus image from an ophthalmology exam")),
    PhotoSource("camera", _skimage("camera"), (
        "Black and white photo of a cameraman with a film camera on a tripod",
        "Man in a coat filming outdoors with a tripod camera, black and white"), monochrome=True),
    PhotoSource("coins", _skimage("coins"), (
        "Black and white photo of old coins laid out on a dark table", "Rows of ancient coins, monochrome"),
        monochrome=True),
    PhotoSource("moon", _skimage("moon"), (
        "Black and white close-up of the lunar surface covered with craters", "Craters on the moon"),
        monochrome=True),
)


@dataclass(frozen=True)
class TinySiteSpec:
    num_images: int = 24
    image_side: int = 640
    seed: int = 0


@dataclass
class LoopbackSite:
    """What was built: the LAION-format rows and which of them should succeed, fail or be filtered."""

    folder: Path
    rows: pa.Table
    good_urls: list[str]
    missing_urls: list[str]  # answer 404
    broken_urls: list[str]  # answer 200 but fail: truncated JPEG, HTML page, opted-out photo
    expected_drops: dict[str, int] = field(default_factory=dict)  # pre-filter reason -> rows

    def url(self, relative: str) -> str:
        return f"{CANONICAL_BASE_URL}/{relative}"

    def info(self) -> dict:
        """The content of loopback_site.json (no port: the site is served wherever a step serves it)."""
        return {"base_url": CANONICAL_BASE_URL, "folder": self.folder.name, "good_photos": len(self.good_urls),
                "expected_download_failures": len(self.missing_urls) + len(self.broken_urls)}


# -- photos ----------------------------------------------------------------------------------------------------


def _as_rgb(image: np.ndarray) -> Image.Image:
    if image.ndim == 2:
        image = np.stack([image] * 3, axis=-1)
    return Image.fromarray(image[..., :3].astype(np.uint8), "RGB")


def _crop_to_aspect(image: Image.Image, aspect: float, zoom: float, rng: np.random.Generator) -> Image.Image:
    """The largest box of `aspect` (W/H) in the image, scaled by `zoom`, at a seeded position."""
    width, height = image.size
    box_w = min(width, height * aspect) * zoom
    box_h = box_w / aspect
    left = rng.uniform(0, width - box_w)
    top = rng.uniform(0, height - box_h)
    return image.crop((round(left), round(top), round(left + box_w), round(top + box_h)))


def _resize_longer(image: Image.Image, side: int) -> Image.Image:
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.LANCZOS)


def make_photo(base: Image.Image, source: PhotoSource, variant: int, side: int, aspect_range: tuple[float, float],
               rng: np.random.Generator) -> tuple[Image.Image, str]:
    """Variant 0 is the photo itself; later variants are seeded crops, flips, rescales and colour shifts."""
    low, high = aspect_range
    caption = source.captions[variant % len(source.captions)]
    if variant == 0:
        photo = _crop_to_aspect(base, float(np.clip(base.width / base.height, low, high)), 1.0, rng)
        return _resize_longer(photo, side), caption
    zoom = rng.uniform(0.55, 1.0)
    photo = _crop_to_aspect(base, rng.uniform(low, high), zoom, rng)
    details = ["close-up"] if zoom < 0.75 else []
    if rng.random() < 0.5:
        photo = ImageOps.mirror(photo)
        details.append("mirrored")
    if rng.random() < 0.3:  # a low-resolution original, upscaled: soft detail
        photo = _resize_longer(photo, max(32, side // int(rng.integers(2, 4))))
        details.append("low resolution")
    photo = _resize_longer(photo, side)
    brightness, saturation = rng.uniform(0.75, 1.25), rng.uniform(0.6, 1.4)
    photo = ImageEnhance.Color(ImageEnhance.Brightness(photo).enhance(brightness)).enhance(saturation)
    if brightness < 0.9:
        details.append("dim light")
    elif brightness > 1.1:
        details.append("bright light")
    if not source.monochrome and saturation > 1.2:
        details.append("vivid colours")
    elif not source.monochrome and saturation < 0.8:
        details.append("muted colours")
    return photo, caption + (f", {', '.join(details)}" if details else "")


def _jpeg_bytes(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def truncate_jpeg(data: bytes) -> bytes:
    """Cut a JPEG just after its start-of-scan header: the header parses, the pixels cannot be decoded."""
    start_of_scan = data.find(b"\xff\xda")
    assert start_of_scan > 0, "a baseline JPEG has a start-of-scan marker"
    header_length = int.from_bytes(data[start_of_scan + 2:start_of_scan + 4], "big")
    return data[:start_of_scan + 2 + header_length + 8]


NOT_A_PHOTO = b"""<!DOCTYPE html>
<html><head><title>Image not available</title></head>
<body><h1>This image is no longer available</h1><p>The page you requested has moved.</p></body></html>
"""


# -- the site ---------------------------------------------------------------------------------------------------


def _aspect_range(rule: MetadataFilter) -> tuple[float, float]:
    low, high = max(rule.min_aspect, 1 / MAX_ASPECT), min(rule.max_aspect, MAX_ASPECT)
    if low > high:
        raise ValueError(f"the tiny source makes photos with aspect ratios in [{1 / MAX_ASPECT:.2f}, {MAX_ASPECT}], "
                         f"which prepare_metadata.min_aspect/max_aspect ({rule.min_aspect}, {rule.max_aspect}) "
                         f"would all drop; widen them")
    return low, high


def build_loopback_site(folder: Path, spec: TinySiteSpec, rule: MetadataFilter) -> LoopbackSite:
    """Write the photos and broken files under `folder`; return the LAION-format rows that point at them."""
    if spec.image_side / MAX_ASPECT <= rule.min_side:
        raise ValueError(f"prepare_metadata.tiny_image_side ({spec.image_side}) must exceed {MAX_ASPECT} x "
                         f"min_side ({rule.min_side}) so the tiny photos pass the pre-filter")
    if spec.num_images < 1:
        raise ValueError(f"prepare_metadata.tiny_num_images must be >= 1, got {spec.num_images}")
    aspect_range = _aspect_range(rule)
    (folder / "photos").mkdir(parents=True, exist_ok=True)
    (folder / OPT_OUT_FOLDER).mkdir(exist_ok=True)
    site = LoopbackSite(folder, rows=pa.table({}), good_urls=[], missing_urls=[], broken_urls=[])
    rows: list[dict] = []
    rng = np.random.default_rng(spec.seed)
    bases: dict[str, Image.Image] = {}

    def add_row(relative: str, caption: str, size: tuple[int, int], **overrides: float) -> str:
        url = site.url(relative)
        digest = int.from_bytes(hashlib.sha256(url.encode()).digest()[:8], "big", signed=True)
        rows.append({"URL": url, "TEXT": caption, "WIDTH": size[0], "HEIGHT": size[1],
                     "similarity": float(rng.uniform(0.28, 0.40)), "hash": digest,
                     "punsafe": float(rng.uniform(0.0, 0.08)), "pwatermark": float(rng.uniform(0.01, 0.3)),
                     "aesthetic": float(rng.uniform(4.5, 7.0)), **overrides})
        return url

    def photo(index: int) -> tuple[Image.Image, str]:
        source = PHOTO_SOURCES[index % len(PHOTO_SOURCES)]
        if source.name not in bases:
            bases[source.name] = _as_rgb(source.load())
        photo_rng = np.random.default_rng([spec.seed, index])
        return make_photo(bases[source.name], source, index // len(PHOTO_SOURCES), spec.image_side,
                          aspect_range, photo_rng)

    for index in range(spec.num_images):
        image, caption = photo(index)
        relative = f"photos/{index:05d}_{PHOTO_SOURCES[index % len(PHOTO_SOURCES)].name}.jpg"
        (folder / relative).write_bytes(_jpeg_bytes(image))
        site.good_urls.append(add_row(relative, caption, image.size))
    good_size = image.size

    # Rows that pass the pre-filter but must fail to download.
    for k in (1, 2):
        site.missing_urls.append(add_row(f"photos/missing_{k}.jpg", "a photo that was deleted", good_size))
    image, caption = photo(spec.num_images)
    (folder / "photos/truncated.jpg").write_bytes(truncate_jpeg(_jpeg_bytes(image)))
    site.broken_urls.append(add_row("photos/truncated.jpg", caption, image.size))
    (folder / "photos/not_a_photo.jpg").write_bytes(NOT_A_PHOTO)
    site.broken_urls.append(add_row("photos/not_a_photo.jpg", "a broken image link", good_size))
    image, caption = photo(spec.num_images + 1)
    (folder / OPT_OUT_FOLDER / "photo.jpg").write_bytes(_jpeg_bytes(image))
    site.broken_urls.append(add_row(f"{OPT_OUT_FOLDER}/photo.jpg", caption, image.size))

    # Rows the pre-filter must drop (real photos, so only the metadata decides).
    drops = _add_prefilter_drops(folder, rule, photo, add_row, good_size)
    site.rows = _shuffled_table(rows, original=0, duplicate=len(rows) - 1, rng=rng)
    site.expected_drops = drops
    return site


def _add_prefilter_drops(folder: Path, rule: MetadataFilter, photo: Callable, add_row: Callable,
                         good_size: tuple[int, int]) -> dict[str, int]:
    drops: dict[str, int] = {}
    image, caption = photo(0)
    short = min(good_size)
    if rule.min_side > 0:
        small = image.resize((max(1, rule.min_side * 2 // 3), max(1, rule.min_side // 2)))
        (folder / "photos/too_small.jpg").write_bytes(_jpeg_bytes(small))
        add_row("photos/too_small.jpg", f"{caption}, thumbnail", small.size)
        drops["too_small"] = 1
    if rule.max_aspect <= 4.0:  # a wider "panorama" would be a huge file for nothing
        panorama = image.resize((int(np.ceil(short * rule.max_aspect * 1.5)), short))
        (folder / "photos/panorama.jpg").write_bytes(_jpeg_bytes(panorama))
        add_row("photos/panorama.jpg", f"{caption}, stretched panorama", panorama.size)
        drops["bad_aspect"] = 1
    if rule.max_pwatermark is not None and rule.max_pwatermark <= 1.0:
        (folder / "photos/watermarked.jpg").write_bytes(_jpeg_bytes(image))
        add_row("photos/watermarked.jpg", f"{caption} - stock photo preview", image.size,
                pwatermark=min(1.0, (rule.max_pwatermark + 1.0) / 2))
        drops["watermarked"] = 1
    if rule.max_punsafe is not None and rule.max_punsafe <= 1.0:
        (folder / "photos/flagged.jpg").write_bytes(_jpeg_bytes(image))
        add_row("photos/flagged.jpg", caption, image.size, punsafe=min(1.0, (rule.max_punsafe + 1.0) / 2))
        drops["unsafe"] = 1
    # Last row (the caller keeps it after the first one): the first photo's URL again.
    add_row(f"photos/00000_{PHOTO_SOURCES[0].name}.jpg", "the same photo again, posted elsewhere", good_size)
    drops["duplicate_url"] = 1
    return drops


def _shuffled_table(rows: list[dict], original: int, duplicate: int, rng: np.random.Generator) -> pa.Table:
    """Seeded order so broken rows spread over shards; the duplicate stays after its original (first wins)."""
    order = [int(i) for i in rng.permutation(len(rows))]
    at_original, at_duplicate = order.index(original), order.index(duplicate)
    if at_duplicate < at_original:
        order[at_original], order[at_duplicate] = duplicate, original
    return pa.Table.from_pylist([rows[k] for k in order], schema=CANONICAL_SCHEMA)


# -- serving ------------------------------------------------------------------------------------------------------


class _SiteHandler(SimpleHTTPRequestHandler):
    """Static files; anything under opt_out/ carries the opt-out header img2dataset respects."""

    def end_headers(self) -> None:
        if self.path.lstrip("/").startswith(f"{OPT_OUT_FOLDER}/"):
            self.send_header("X-Robots-Tag", "noai, noimageai")
        super().end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        log.debug("%s - %s", self.address_string(), format % args)


@dataclass(frozen=True)
class LoopbackServer:
    host: str
    port: int
    folder: Path

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, relative: str) -> str:
        return f"{self.base_url}/{relative}"

    def served_urls(self) -> UrlRewrite:
        """Canonical URL -> where this server answers it (for whoever fetches: img2dataset, the probe)."""
        return UrlRewrite(f"^{re.escape(CANONICAL_BASE_URL)}/", f"{self.base_url}/")

    def served_url(self, url: str) -> str:
        return self.served_urls().apply(url)


def canonical_urls() -> UrlRewrite:
    """A served URL (of any port: a crashed attempt's too) -> the canonical URL the data keeps."""
    return UrlRewrite(_SERVED_BASE_PATTERN, f"{CANONICAL_BASE_URL}/")


@contextlib.contextmanager
def serve_folder(folder: Path, host: str = SERVE_HOST, port: int = 0) -> Iterator[LoopbackServer]:
    """Serve `folder` over HTTP on a loopback address until the block exits (port 0: any free port, outside
    Ray's worker port range like every port of this project)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the tiny site is only served on a loopback address, not {host}")
    if not Path(folder).is_dir():
        raise ValueError(f"cannot serve {folder}: no such folder")
    check_port(port, "prepare_metadata.tiny_port")
    server = _bind_server(host, port, functools.partial(_SiteHandler, directory=str(folder)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name=f"loopback-site-{server.server_address[1]}", daemon=True)
    thread.start()
    try:
        yield LoopbackServer(host, int(server.server_address[1]), Path(folder))
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _bind_server(host: str, port: int, handler: Callable) -> ThreadingHTTPServer:
    """The server on `port`, or (port 0) on a free port the OS offers outside Ray's worker range."""
    for _ in range(100 if port == 0 else 1):
        try:
            server = ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            raise ValueError(f"cannot serve the tiny photo site on {host}:{port} ({err.strerror}); another "
                             f"program uses that port: pick a free one with --set prepare_metadata.tiny_port=<port>, "
                             f"or 0 for any free port") from None
        if port or not in_ray_worker_range(server.server_address[1]):
            return server
        server.server_close()  # the OS's ephemeral range overlaps Ray's: ask again
    raise ValueError("the operating system offered only ports in Ray's worker range for the tiny photo site; "
                     "choose one with --set prepare_metadata.tiny_port=<port outside 10002-19999>")


def probe_urls(urls: list[str], timeout_s: float = 5.0) -> dict[str, int]:
    """HTTP status of each URL (HEAD request); 0 when nothing answered."""
    statuses = {}
    for url in urls:
        request = urllib.request.Request(url, method="HEAD")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                statuses[url] = response.status
        except urllib.error.HTTPError as err:
            statuses[url] = err.code
        except OSError:
            statuses[url] = 0
    return statuses
