"""DICOMweb backend: a whole slide image stored in a PACS or a DICOMweb server (Orthanc, Google Healthcare, DCM4CHEE),
read with wsidicom's DICOMweb client, which fetches only the frames (tiles) a read covers.

A slide is `dicomweb+http(s)://host[:port]/<prefix>/studies/<study uid>/series/<series uid>`: the server's DICOMweb
root (e.g. http://pacs:8042/dicom-web), then the series. Credentials, when the server wants them, are read from the
environment, never recorded in a plan: a bearer token from MIXMAG_DICOMWEB_TOKEN, or a user and password (HTTP basic
authentication) from MIXMAG_DICOMWEB_USER and MIXMAG_DICOMWEB_PASSWORD. Levels follow OpenSlide's DICOM convention
(downsample = the mean of the width and height ratios to level 0), so a series gives the same plan whether read from
a local folder by OpenSlide or from a server by wsidicom. wsidicom is imported only when a DICOMweb slide is opened.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import SlideNotFoundError, SlideUnreadableError
from ..remote import DEFAULT_TIMEOUT_S, RemoteAccessError, is_network_error, timeout_s
from .base import BackendHandle, NativeMpp, as_rgb

TOKEN_ENV = "MIXMAG_DICOMWEB_TOKEN"
USER_ENV, PASSWORD_ENV = "MIXMAG_DICOMWEB_USER", "MIXMAG_DICOMWEB_PASSWORD"
_URL = re.compile(
    r"^dicomweb\+(?P<base>https?://[^/?#]+(?:/[^?#]*?)?)/studies/(?P<study>[0-9.]+)/series/(?P<series>[0-9.]+)/?$",
    re.IGNORECASE,
)
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


@dataclass(frozen=True)
class SeriesAddress:
    """Where a DICOMweb series is: the server's DICOMweb root and the two UIDs."""

    base: str
    study: str
    series: str

    @property
    def url(self) -> str:
        return f"dicomweb+{self.base}/studies/{self.study}/series/{self.series}"


def parse_url(url: str) -> SeriesAddress:
    """The parts of a dicomweb+http(s) slide URL; anything else is one sentence with the expected form."""
    match = _URL.match(url.strip())
    if match is None or len(match["study"]) > 64 or len(match["series"]) > 64:
        raise SlideNotFoundError(
            url,
            "is not a DICOMweb series address.",
            "write it as dicomweb+http://HOST:PORT/<dicomweb root>/studies/<study UID>/series/<series UID>.",
        )
    return SeriesAddress(match["base"].rstrip("/"), match["study"], match["series"])


def series_url(base: str, study: str, series: str, where: str) -> str:
    """A cohort row's DICOMweb server and UIDs as one slide URL (the form a plan records)."""
    server = base.strip().rstrip("/")
    server = server[len("dicomweb+") :] if server.lower().startswith("dicomweb+") else server
    if not re.match(r"^https?://[^/?#]+", server, re.IGNORECASE):
        raise SlideNotFoundError(
            where, f"DICOMweb server {base!r} is not an http(s) URL.", "e.g. http://pacs:8042/dicom-web."
        )
    for name, uid in (("study", study), ("series", series)):
        if not _UID.match(uid.strip()) or len(uid.strip()) > 64:
            raise SlideNotFoundError(where, f"{name} UID {uid!r} is not a DICOM UID.", "digits and dots, at most 64.")
    return f"dicomweb+{server}/studies/{study.strip()}/series/{series.strip()}"


def _quiet_bulk_data(record: logging.LogRecord) -> bool:
    """pydicom logs (and warns) once per instance that wsidicom's metadata leaves bulk data (the ICC profile) unread:
    expected for a DICOMweb slide, so not repeated to the user."""
    return "No bulk data URI handler" not in record.getMessage()


def _session():
    """A requests session that gives up after MIXMAG_REMOTE_TIMEOUT seconds and sends the bearer token if set."""
    import requests

    limit = timeout_s()

    class TimeLimitedSession(requests.Session):
        def request(self, *args: Any, **kwargs: Any):
            kwargs.setdefault("timeout", limit)
            return super().request(*args, **kwargs)

    session = TimeLimitedSession()
    token = os.environ.get(TOKEN_ENV, "").strip()
    if token:
        session.headers["Authorization"] = f"Bearer {token}"
    elif os.environ.get(USER_ENV):
        session.auth = (os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""))
    return session


def web_error(url: str, exc: BaseException) -> RemoteAccessError | SlideNotFoundError:
    """One sentence for what a DICOMweb server or the network says."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    text = " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
    if status in (401, 403):
        return RemoteAccessError(
            url,
            f"the DICOMweb server refused access (HTTP {status}).",
            f"give credentials it accepts: {TOKEN_ENV} (a bearer token), or {USER_ENV} and {PASSWORD_ENV}.",
        )
    if status == 404:
        return SlideNotFoundError(url, "the DICOMweb server has no such study or series (HTTP 404).", "check the UIDs.")
    lowered = text.lower()
    if "timeout" in lowered or "timed out" in lowered:
        return RemoteAccessError(
            url,
            f"the DICOMweb server did not answer within {timeout_s():g} s.",
            f"check the server and the network, or allow more time with MIXMAG_REMOTE_TIMEOUT=SECONDS "
            f"({DEFAULT_TIMEOUT_S:g} by default).",
        )
    if "connection" in lowered or "refused" in lowered:
        return RemoteAccessError(url, f"could not connect to the DICOMweb server ({text}).", "check the URL.")
    return RemoteAccessError(url, f"the DICOMweb server could not serve it ({text}).", "check the URL and the server.")


def _instances_digest(client: Any, address: SeriesAddress) -> tuple[int, str]:
    """(instance count, digest of the instances' UIDs): what tells that a series was replaced or changed."""
    found = client.search_for_instances(
        study_instance_uid=address.study, series_instance_uid=address.series, fields=["00080018"]
    )
    uids = sorted(str(item.get("00080018", {}).get("Value", [""])[0]) for item in found)
    if not uids:
        raise SlideNotFoundError(address.url, "the DICOMweb server has no instances in this series.", "check the UIDs.")
    return len(uids), hashlib.sha256("\n".join(uids).encode()).hexdigest()[:32]


def dicomweb_fingerprint(url: str) -> dict:
    """The plan's record of a DICOMweb series: its URL, instance count (as size) and a digest of its instance UIDs."""
    from dicomweb_client import DICOMwebClient

    address = parse_url(url)
    try:
        count, digest = _instances_digest(DICOMwebClient(address.base, session=_session()), address)
    except SlideNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001 - requests and the client raise many kinds
        raise web_error(url, exc) from None
    return {"path": address.url, "size_bytes": count, "mtime": 0.0, "etag": digest}


class DicomWebHandle(BackendHandle):
    name = "dicomweb"

    def __init__(self, url: str) -> None:
        from dicomweb_client import DICOMwebClient
        from wsidicom import WsiDicom, WsiDicomWebClient

        address = parse_url(str(url))
        logger = logging.getLogger("pydicom")
        logger.addFilter(_quiet_bulk_data)
        try:
            client = DICOMwebClient(address.base, session=_session())
            count, digest = _instances_digest(client, address)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="No bulk data URI handler")
                self._wsi = WsiDicom.open_web(WsiDicomWebClient(client), address.study, address.series)
        except (SlideNotFoundError, SlideUnreadableError):
            raise
        except Exception as exc:  # noqa: BLE001 - requests, the client and wsidicom raise many kinds
            if is_network_error(exc) or getattr(exc, "response", None) is not None:
                raise web_error(address.url, exc) from None
            raise
        self.fingerprint = {"path": address.url, "size_bytes": count, "mtime": 0.0, "etag": digest}
        levels = list(self._wsi.levels)
        self._level_numbers = [level.level for level in levels]
        width0, height0 = levels[0].size.width, levels[0].size.height
        self.level_dimensions = tuple((level.size.width, level.size.height) for level in levels)
        self.level_downsamples = tuple((width0 / w + height0 / h) / 2 for w, h in self.level_dimensions)
        spacing = levels[0].pixel_spacing  # mm per pixel
        self.native_mpp = (
            NativeMpp("DICOM PixelSpacing (DICOMweb)", float(spacing.width) * 1000, float(spacing.height) * 1000)
            if spacing is not None
            else None
        )
        self.properties = {
            "dicomweb.study-uid": address.study,
            "dicomweb.series-uid": address.series,
            "dicomweb.levels": str(len(levels)),
        }

    def read(self, level: int, x: int, y: int, width: int, height: int) -> np.ndarray:
        image = self._wsi.read_region((x, y), self._level_numbers[level], (width, height))
        return as_rgb(np.asarray(image.convert("RGB")), "this DICOMweb series")

    def close(self) -> None:
        self._wsi.close()
