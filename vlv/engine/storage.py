"""Filesystems for store URIs: one place that turns `s3://...`, `gs://...` or a local path into a filesystem.

Three libraries touch a store: fsspec (s3fs, gcsfs) for the engine and most steps, pyarrow's own filesystems for
Ray Data and Ray Train, and boto3 (S3) or google-cloud-storage (GCS) inside MLflow's artifact repositories.
S3-compatible servers (MinIO, Ceph, R2, moto in the tests) are reached through the standard `AWS_ENDPOINT_URL` /
`AWS_ENDPOINT_URL_S3` variables; botocore (so s3fs and boto3) reads them itself, and `arrow_filesystem` passes
them to pyarrow explicitly, so every layer talks to the same server. A GCS emulator (fake-gcs-server in the
tests) is named by the standard `STORAGE_EMULATOR_HOST`, which gcsfs and google-cloud-storage read themselves
and `arrow_filesystem` passes to pyarrow's GCS filesystem. `STORE_ENV_VARS` are forwarded to Ray workers on
other nodes.

Also here: the one primitive the object-store protocols need, `create_exclusive` (write an object only if it
does not exist: S3 `If-None-Match: *`, GCS `ifGenerationMatch=0`, `O_EXCL` locally), and `fetch_to_cache`,
which brings a remote file or folder (weights, an upstream output) to this node once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import fsspec

log = logging.getLogger("vlv.storage")

# Not secrets: where the object store is. Credentials stay in each node's environment (or instance role).
STORE_ENV_VARS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_REGION", "AWS_DEFAULT_REGION",
                  "STORAGE_EMULATOR_HOST", "GOOGLE_CLOUD_PROJECT", "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT")


class StoreAccessError(ValueError):
    """The store cannot be reached or used; the message names the cause and the fix."""


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def local_path_of(uri: str) -> str:
    return uri.removeprefix("file://")


def filesystem(uri: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a local path or URI.

    The S3 endpoint is passed explicitly (not only left to botocore's own reading of the environment) so that
    fsspec's instance cache, keyed by these arguments, never hands out a filesystem bound to an old endpoint.
    Listings are never cached: other processes and nodes add attempts and commits all the time, and a cached
    listing of a parent folder makes s3fs report a new file as a folder and gcsfs as missing.
    """
    if not is_remote(uri):
        return fsspec.core.url_to_fs(local_path_of(uri))
    options: dict[str, Any] = {"use_listings_cache": False}
    if uri.startswith(("s3://", "s3a://")) and s3_endpoint():
        options["client_kwargs"] = {"endpoint_url": s3_endpoint()}  # s3fs's documented way, in every version
    if uri.startswith(("gs://", "gcs://")) and gcs_emulator():
        return _emulator_gcsfs(uri)
    return fsspec.core.url_to_fs(uri, **options)


def s3_endpoint() -> str | None:
    """The S3 endpoint botocore would use: the S3-specific variable wins over the general one."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def gcs_emulator() -> str | None:
    """The GCS emulator's URL from `STORAGE_EMULATOR_HOST` (`host:port` gets `http://`, as gcsfs does), if set."""
    host = os.environ.get("STORAGE_EMULATOR_HOST", "").strip().rstrip("/")
    if host in ("", "default"):
        return None
    return host if "://" in host else f"http://{host}"


def _emulator_gcsfs(uri: str) -> tuple[Any, str]:
    """gcsfs's plain filesystem on the emulator, anonymous (emulators check no credentials).

    Not the class fsspec picks by default (gcsfs's `ExtendedGcsFileSystem`), which asks Google's gRPC control
    plane for every bucket's layout before each call: an emulator does not serve it, so with `token="anon"` every
    call waits out a 60 s gRPC timeout (without credentials it fails at once, with a warning per call). The
    endpoint is passed explicitly so fsspec's instance cache is keyed by it.
    """
    from gcsfs.core import GCSFileSystem

    fs = GCSFileSystem(endpoint_url=gcs_emulator(), token="anon", use_listings_cache=False)
    return fs, GCSFileSystem._strip_protocol(uri)


def arrow_filesystem(uri: str) -> tuple[Any, str]:
    """(pyarrow filesystem, path) for Ray Data and Ray Train, on the same server as fsspec (S3 endpoint, GCS
    emulator)."""
    import pyarrow.fs as pafs

    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(Path(local_path_of(uri)).resolve())
    scheme, _, rest = uri.partition("://")
    if scheme in ("s3", "s3a"):
        endpoint = s3_endpoint()
        kwargs: dict[str, Any] = {}
        if endpoint:
            kind, _, host = endpoint.partition("://")
            kwargs.update(endpoint_override=host or kind, scheme=kind if host else "https")
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
        if region:
            kwargs["region"] = region
        return pafs.S3FileSystem(**kwargs), rest.rstrip("/")
    if scheme in ("gs", "gcs") and gcs_emulator():
        kind, _, host = gcs_emulator().partition("://")
        return pafs.GcsFileSystem(anonymous=True, scheme=kind, endpoint_override=host), rest.rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def read_bytes(uri: str | os.PathLike) -> bytes:
    """The content of a local file or a store object (images the eval steps read on any node)."""
    text = os.fspath(uri)
    if not is_remote(text):
        return Path(local_path_of(text)).read_bytes()
    fs, path = filesystem(text)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        raise ValueError(f"{text} does not exist") from None


def create_exclusive(fs: Any, path: str, data: bytes) -> bool:
    """Write `data` at `path` only if nothing is there; False if something already was (atomic on each store).

    `data` must be unique to the caller (the commits and leases carry an attempt id or a token): an object that
    already holds exactly these bytes is the caller's own, created by a request whose answer was lost and that
    the client retried (gcsfs and botocore retry a timed-out upload, and the retry then meets the precondition).
    """
    protocol = _protocol(fs)
    if protocol in ("file", "local"):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        return True
    if protocol in ("s3", "s3a", "gs", "gcs", "memory"):
        if protocol == "memory":  # fsspec's in-memory store (tests): single process, check-then-write is atomic
            if fs.exists(path):
                return False
            fs.pipe_file(path, data)
            return True
        try:
            fs.pipe_file(path, data, mode="create")  # S3 If-None-Match: *, GCS ifGenerationMatch=0
        except FileExistsError:
            return _holds(fs, path, data)
        except OSError as err:
            if "pre-condition" in str(err).lower() or "precondition" in str(err).lower():
                return _holds(fs, path, data)
            raise
        return True
    raise StoreAccessError(f"the {protocol}:// filesystem has no exclusive create, which safe publishing needs; "
                           "use a local folder, s3:// (or an S3-compatible server) or gs://")


def _holds(fs: Any, path: str, data: bytes) -> bool:
    try:
        return fs.cat_file(path) == data
    except FileNotFoundError:  # deleted since (an old lease epoch pruned): it was someone else's
        return False


def modified_time(info: dict[str, Any]) -> float | None:
    """The server's modification time of a file from `fs.info`, in epoch seconds (None if it has none)."""
    for name in ("LastModified", "updated", "mtime", "last_modified"):
        value = info.get(name)
        if value is None:
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            import datetime as dt

            try:
                return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def node_cache_root() -> Path:
    """Where this node keeps copies of remote files: `$VLV_NODE_CACHE`, else ~/.cache/vlv/node_cache."""
    return Path(os.environ.get("VLV_NODE_CACHE") or Path.home() / ".cache" / "vlv" / "node_cache")


def fetch_to_cache(uri: str, *, expected_size: int | None = None) -> Path:
    """A local copy of a remote file or folder, fetched once per node; a local path is returned as it is.

    Copies land in `node_cache_root()/<sha256 of the URI>/<name>`, written to a temporary name and renamed,
    so a crash mid-copy never leaves a half file that a later call would trust.
    """
    if not is_remote(uri):
        return Path(local_path_of(uri))
    fs, path = filesystem(uri)
    name = path.rstrip("/").rsplit("/", 1)[-1] or "object"
    target = node_cache_root() / hashlib.sha256(uri.encode()).hexdigest()[:24] / name
    if target.exists() and (expected_size is None or not target.is_file() or target.stat().st_size == expected_size):
        return target
    try:
        is_folder = fs.isdir(path)
        if not is_folder and not fs.exists(path):
            raise FileNotFoundError(uri)
    except FileNotFoundError:
        raise ValueError(f"{uri} does not exist (checked from host {os.uname().nodename})") from None
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=target.parent))
    try:
        staged = tmp / name
        if is_folder:
            fs.get(path.rstrip("/") + "/", str(staged), recursive=True)
        else:
            fs.get_file(path, str(staged))
        if target.exists():  # another process fetched it meanwhile
            return target
        os.rename(staged, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %s to %s", uri, target)
    return target


def local_weights(value: str) -> str:
    """A weights setting as a loader takes it: a store URI is fetched to this node once; a local path or a
    hub id (org/name) is returned unchanged."""
    return str(fetch_to_cache(value)) if is_remote(value) else value


def checked_on_this_machine(value: str) -> bool:
    """Whether a preflight on the driver can judge a weights path: not for a store URI (checked through the
    store) and not when joined to a cluster (the engine checks it on every node that may load it)."""
    return bool(value) and not is_remote(value) and not os.environ.get("RAY_ADDRESS")


def describe_store_error(uri: str, err: BaseException) -> str:
    """One line naming why a store URI cannot be used and how to fix it (endpoint, bucket, credentials)."""
    text = f"{type(err).__name__}: {err}"
    lowered = text.lower()
    gcs = uri.startswith(("gs://", "gcs://"))
    endpoint = gcs_emulator() if gcs else s3_endpoint()
    where = f" at {endpoint}" if endpoint else ""
    if any(s in lowered for s in ("could not connect", "connection refused", "name or service not known",
                                  "endpoint url", "cannot connect", "connect timeout", "max retries")):
        variables = "STORAGE_EMULATOR_HOST (unset it for Google's own service)" if gcs else \
            "AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3"
        return f"store {uri}: the object store{where} does not answer ({_short(text)}); start it or fix {variables}"
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered or "specified bucket does not" in lowered:
        create = "gcloud storage buckets create gs://<bucket>" if gcs else "aws s3 mb s3://<bucket>"
        return f"store {uri}: the bucket does not exist{where}; create it first (e.g. `{create}`)"
    if any(s in lowered for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "access denied", "permissionerror",
                                  "access key id you provided", "request signature we calculated",
                                  "accessdenied", "forbidden", "403", "unauthorized", "unable to locate credentials",
                                  "nocredentials", "invalid credentials", "expiredtoken")):
        credentials = ("GOOGLE_APPLICATION_CREDENTIALS (a service account key) or `gcloud auth application-default "
                       "login`" if gcs else "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or an instance role)")
        return (f"store {uri}: the object store{where} refused the credentials ({_short(text)}); set "
                f"{credentials} with access to the bucket")
    return f"store {uri}: {_short(text)}"


def _short(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit] + "..."


def _protocol(fs: Any) -> str:
    protocol = fs.protocol
    return protocol[0] if isinstance(protocol, (tuple, list)) else str(protocol)
