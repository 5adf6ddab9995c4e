"""Slides behind a URL: object storage and HTTP through fsspec (s3://, gs://, az://, https://), read by range requests.

A slide URL stays a string from the command line or cohort table to the plan (a `Path` would fold `s3://` into
`s3:/`). TiffSlide reads a TIFF/SVS through an fsspec file, fetching only the byte ranges of the tiles it decodes,
so the tiles and stores are those of the local copy, bit for bit. OpenSlide reads local files only: a slide that
needs it is downloaded whole into a cache folder when one is given (`--cache DIR` or MIXMAG_SLIDE_CACHE), and
refused with that advice otherwise.

Credentials and endpoints come from where the storage's own tools read them: AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_PROFILE / AWS_ENDPOINT_URL for s3 (botocore), GOOGLE_APPLICATION_CREDENTIALS for gs,
AZURE_STORAGE_* for az, and fsspec's own config (~/.config/fsspec, FSSPEC_<PROTOCOL>_<OPTION>). mixmag adds only
time limits (MIXMAG_REMOTE_TIMEOUT seconds, 30 by default), so a silent server is a sentence, not a hang.

What a slide URL is at a moment (size, ETag, last-modified) is recorded in its plan; embedding re-reads it and
refuses a slide that changed between tiling and embedding (`check_unchanged`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ..errors import SlideError, SlideNotFoundError, SlideUnreadableError
from ..fileio import atomic_path, make_folder

FSSPEC_SCHEMES = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "http", "https"})
DICOMWEB_SCHEMES = frozenset({"dicomweb+http", "dicomweb+https"})
CACHE_ENV = "MIXMAG_SLIDE_CACHE"
TIMEOUT_ENV = "MIXMAG_REMOTE_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
BLOCK_BYTES = 1 << 20  # range-read block: a few JPEG tiles of a level, or an IFD table; at most 32 blocks are kept
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_INSTALL = {
    "s3": "pip install 'mixmag[remote]' (s3fs)",
    "gs": "pip install gcsfs",
    "az": "pip install adlfs",
    "http": "pip install aiohttp",
}


class SlideChangedError(SlideError):
    """A remote slide that is not the object that was tiled (other size or ETag)."""


class RemoteAccessError(SlideUnreadableError):
    """A remote slide the storage refused or did not serve: denied, no such bucket, no answer in time."""


SlideLocation = Path | str  # a local path, or a URL kept as text


def scheme(location: object) -> str | None:
    """The URL scheme of a slide location (lower case), or None for a local path."""
    if not isinstance(location, str):
        return None
    match = _SCHEME.match(location)
    return match.group(1).lower() if match else None


def is_url(location: object) -> bool:
    """A slide given by URL: one fsspec reads (object storage, HTTP) or a DICOMweb series."""
    return scheme(location) in FSSPEC_SCHEMES | DICOMWEB_SCHEMES


def is_dicomweb(location: object) -> bool:
    return scheme(location) in DICOMWEB_SCHEMES


def slide_location(text: str | Path) -> SlideLocation:
    """What a slide argument or table cell names: a URL stays text; anything else is a local path. An unknown scheme
    (ftp://, s4://) is refused here, not later as a missing local file."""
    if isinstance(text, Path):
        return text
    found = scheme(text)
    if found is None:
        return Path(text)
    if found in FSSPEC_SCHEMES | DICOMWEB_SCHEMES:
        return text
    raise SlideNotFoundError(
        text,
        f"'{found}://' is not a slide location mixmag reads.",
        "use a local path, s3://, gs://, az://, http(s):// or dicomweb+http(s)://.",
    )


def url_name(url: str) -> str:
    """The last part of a URL's path (its file name), without query or fragment."""
    path = re.sub(r"[?#].*$", "", _SCHEME.sub("", url, count=1))
    return path.rstrip("/").rsplit("/", 1)[-1]


def url_suffix(url: str) -> str:
    name = url_name(url).lower()
    return "." + name.rsplit(".", 1)[-1] if "." in name else ""


@dataclass(frozen=True)
class RemoteInfo:
    """What the storage says an object is now: what a plan records and embedding checks."""

    size_bytes: int
    etag: str | None
    mtime: float


def timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        value = DEFAULT_TIMEOUT_S
    return value if 0 < value < 3600 else DEFAULT_TIMEOUT_S


_SETTINGS_PREFIXES = ("AWS_", "FSSPEC_", "GOOGLE_", "GCS", "AZURE_", "MIXMAG_REMOTE_")
_FILESYSTEMS: dict[tuple, Any] = {}


def filesystem(url: str) -> tuple[Any, str]:
    """(fsspec filesystem, path inside it) for a URL, with mixmag's time limits added to the user's settings.

    One filesystem per protocol and per state of the environment it reads (endpoint, keys, profile) in each process:
    a client's set-up (botocore loads its S3 model, ~0.2 CPU s) is paid once, and new credentials or another endpoint
    in the environment give a new client (fsspec's own instance cache would keep the first ones)."""
    import fsspec.core

    protocol = scheme(url)
    if protocol in ("http", "https"):
        _check_address(url)
    settings = tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith(_SETTINGS_PREFIXES)))
    key = (protocol, os.getpid(), settings)
    if key in _FILESYSTEMS:
        fs = _FILESYSTEMS[key]
        return fs, fs._strip_protocol(url)
    options: dict[str, Any] = {"skip_instance_cache": True}
    limit = timeout_s()
    if protocol in ("s3", "s3a"):
        options["config_kwargs"] = {"connect_timeout": limit, "read_timeout": limit, "retries": {"max_attempts": 2}}
    elif protocol in ("http", "https"):
        import aiohttp

        options["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=None, sock_connect=limit, sock_read=limit)}
    try:
        fs, path = fsspec.core.url_to_fs(url, **options)
    except ImportError as exc:
        install = _INSTALL.get(
            {"s3a": "s3", "gcs": "gs", "abfs": "az", "abfss": "az", "https": "http"}.get(
                protocol or "", protocol or ""
            ),
            "",
        )
        raise SlideUnreadableError(
            url, f"reading {protocol}:// needs a package that is not installed ({exc}).", install or "install it."
        ) from None
    if hasattr(fs, "retries"):  # s3fs retries a timeout 5 times with back-off; twice says the same sooner
        fs.retries = 2
    _FILESYSTEMS[key] = fs
    return fs, path


def _check_address(url: str) -> None:
    """Refuse an address that names no host and port (a port past 65535, an unclosed IPv6 bracket): fsspec read
    such a URL as 'no such object in the storage'."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing the port is the check
    except ValueError as exc:
        why = f"is not a valid address ({exc})."
        raise RemoteAccessError(url, why, "check the host and the port (1-65535).") from None
    if not parts.hostname:
        raise RemoteAccessError(url, "names no host.", "write it as https://HOST[:PORT]/PATH.")


def remote_info(url: str) -> RemoteInfo:
    """Size, ETag and last-modified time of the object; a storage error becomes one sentence naming the URL."""
    fs, path = filesystem(url)
    try:
        info = fs.info(path)
    except Exception as exc:  # noqa: BLE001 - each storage client fails in its own classes; all become a sentence
        raise access_error(url, exc) from None
    if info.get("type") == "directory":
        raise SlideUnreadableError(url, "is a folder (prefix) in the storage, not a slide.", "give the slide's URL.")
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash") or info.get("content_md5")
    modified = info.get("LastModified") or info.get("last_modified") or info.get("mtime") or info.get("updated")
    return RemoteInfo(int(info.get("size") or 0), str(etag).strip('"') if etag else None, _timestamp(modified))


def _timestamp(value: object) -> float:
    if value is None:
        return 0.0
    if hasattr(value, "timestamp"):
        return float(value.timestamp())
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def access_error(url: str, exc: BaseException) -> RemoteAccessError:
    """One sentence for what a network and a storage service can say: no such bucket or object, denied, no answer."""
    chain = _chain(exc)
    text = f"{type(exc).__name__}: {exc}"
    lowered = " ".join(f"{type(e).__name__}: {e}" for e in chain).lower()
    status = next((s for s in map(_http_status, chain) if s is not None), None)
    limit = timeout_s()
    if "nosuchbucket" in lowered or "bucket does not exist" in lowered:
        return RemoteAccessError(
            url, "the storage has no such bucket.", "check the bucket name and the endpoint (AWS_ENDPOINT_URL)."
        )
    if (
        status in (401, 403)
        or any(isinstance(e, PermissionError) for e in chain)
        or any(word in lowered for word in ("accessdenied", "access denied", "forbidden", "invalidaccesskeyid"))
    ):
        return RemoteAccessError(
            url,
            f"the storage refused access ({_short(text)}).",
            "check the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_PROFILE for s3, "
            "GOOGLE_APPLICATION_CREDENTIALS for gs, AZURE_STORAGE_* for az) and that they may read this object.",
        )
    if "timeout" in lowered or "timed out" in lowered or any(isinstance(e, TimeoutError) for e in chain):
        return RemoteAccessError(
            url,
            f"the storage did not answer within {limit:g} s.",
            f"check the network and the endpoint, or allow more time with {TIMEOUT_ENV}=SECONDS.",
        )
    if "could not connect" in lowered or "connection refused" in lowered or "cannot connect" in lowered:
        return RemoteAccessError(
            url, f"could not connect to the storage ({_short(text)}).", "check the endpoint URL and the network."
        )
    if status == 404 or (status is None and isinstance(exc, FileNotFoundError)):
        return RemoteAccessError(url, "no such object in the storage.", "check the URL (the key is case-sensitive).")
    return RemoteAccessError(url, f"the storage could not serve it ({_short(text)}).", "check the URL and the network.")


def _chain(exc: BaseException) -> list[BaseException]:
    """The error and what caused it (fsspec's HTTP client raises FileNotFoundError from the server's 403 or timeout)."""
    found: list[BaseException] = []
    while exc is not None and exc not in found and len(found) < 8:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status an error carries: aiohttp's `status`, botocore's response metadata, requests' response."""
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code if isinstance(code, int) else None
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


_NETWORK_MODULES = ("botocore", "aiobotocore", "aiohttp", "requests", "urllib3", "google", "azure", "gcsfs", "adlfs")


def is_network_error(exc: BaseException) -> bool:
    """An error the storage or the network raised (not a decoder's): said with `access_error`."""
    if isinstance(exc, OSError | TimeoutError):
        return True
    return any(type(e).__module__.split(".")[0] in _NETWORK_MODULES for e in type(exc).__mro__)


def _short(text: str) -> str:
    return " ".join(text.split())[:200]


def open_ranges(url: str) -> IO[bytes]:
    """A file object over the remote slide that fetches the byte ranges read (blocks of BLOCK_BYTES, kept LRU)."""
    fs, path = filesystem(url)
    try:
        return fs.open(path, "rb", block_size=BLOCK_BYTES, cache_type="blockcache")
    except Exception as exc:  # noqa: BLE001 - storage clients' own errors
        raise access_error(url, exc) from None


def cache_folder() -> Path | None:
    """The folder remote slides are downloaded into before reading (`--cache DIR`), or None: range reads only."""
    value = os.environ.get(CACHE_ENV, "")
    return Path(value) if value else None


def cached_copy(url: str, info: RemoteInfo, folder: Path) -> Path:
    """The slide downloaded whole into `folder` (once per URL and ETag/size; a partial download never looks done)."""
    tag = re.sub(r"[^A-Za-z0-9]+", "", info.etag or "")[:40] or f"size{info.size_bytes}"
    name = re.sub(r"[^A-Za-z0-9._+-]+", "_", url_name(url)).strip("._") or "slide"
    target = folder / hashlib.sha256(url.encode("utf-8")).hexdigest()[:16] / tag / name
    if target.is_file() and target.stat().st_size == info.size_bytes:
        return target
    make_folder(target.parent)
    fs, path = filesystem(url)
    with atomic_path(target) as tmp:
        try:
            with fs.open(path, "rb", block_size=8 * BLOCK_BYTES, cache_type="none") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 8 * BLOCK_BYTES)
        except OSError as exc:
            if isinstance(exc, FileNotFoundError | PermissionError) or "timeout" in str(exc).lower():
                raise access_error(url, exc) from None
            raise
        except Exception as exc:  # noqa: BLE001 - storage clients' own errors
            raise access_error(url, exc) from None
        got = os.path.getsize(tmp)
        if got != info.size_bytes:
            raise SlideChangedError(
                url,
                f"downloaded {got} bytes, but the storage said {info.size_bytes} a moment before.",
                "the object is being replaced; run again once it is written.",
            )
    return target


def fingerprint(url: str, info: RemoteInfo) -> dict:
    """The plan's record of a remote slide (SlideRecord's path, size_bytes, mtime, etag)."""
    return {"path": url, "size_bytes": info.size_bytes, "mtime": info.mtime, "etag": info.etag}


def check_unchanged(url: str, recorded_size: int, recorded_etag: str | None, now: dict) -> None:
    """Refuse a remote slide whose size or ETag is not the one its plan recorded: its cells would be another image's."""
    changes = []
    if now["size_bytes"] != recorded_size:
        changes.append(f"size {recorded_size} -> {now['size_bytes']} bytes")
    if recorded_etag and now.get("etag") != recorded_etag:
        changes.append(f"ETag {recorded_etag} -> {now.get('etag')}")
    if changes:
        raise SlideChangedError(
            url,
            f"changed since it was tiled ({'; '.join(changes)}).",
            "re-run `mixmag tile` on it (with --force), then embed again.",
        )
