"""Real servers for the remote-slide tests, started on 127.0.0.1 and stopped after: an S3 server (moto's server mode,
the same HTTP API as AWS S3, spoken to by s3fs/botocore unchanged) and Orthanc with its DICOMweb plugin (Debian's
`orthanc` and `orthanc-dicomweb`; scripts/test.sh installs them where it can). A server that cannot start skips its
tests with the reason; nothing here mocks a client."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ORTHANC_PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")
S3_ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for a block (session fixtures cannot use monkeypatch)."""
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server in a thread on a free 127.0.0.1 port; yields its endpoint URL."""
    for module in ("moto", "flask", "s3fs"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed: pip install 'mixmag[dev]' (moto[server] and s3fs)")
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    try:
        server.start()
    except Exception as exc:  # noqa: BLE001 - any failure to start is the reason to skip
        pytest.skip(f"could not start moto's S3 server on 127.0.0.1: {exc}")
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@contextmanager
def strict_s3_server() -> Iterator[str]:
    """A moto S3 server that checks credentials (INITIAL_NO_AUTH_ACTION_COUNT=0), in its own process: every request
    with keys it never issued is refused with 403, as AWS refuses them."""
    with s3_server_process(strict=True) as endpoint:
        yield endpoint


@contextmanager
def s3_server_process(strict: bool = False) -> Iterator[str]:
    """moto's S3 server in its own process (so its CPU time is not the client's); yields its endpoint URL."""
    port = free_port()
    env = os.environ | ({"INITIAL_NO_AUTH_ACTION_COUNT": "0"} if strict else {})
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not _wait_http(f"http://127.0.0.1:{port}/moto-api/", 30, process):
            pytest.skip("could not start moto's S3 server (its own process) on 127.0.0.1 within 30 s")
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def silent_server() -> Iterator[str]:
    """A TCP server that accepts connections and never answers: what a hung storage endpoint looks like."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def _wait_http(url: str, seconds: float, process: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # it answered
        except OSError:
            time.sleep(0.2)
    return False


def orthanc_plugin() -> Path | None:
    for folder in ORTHANC_PLUGIN_DIRS:
        for name in ("libOrthancDicomWeb.so",):
            if (Path(folder) / name).is_file():
                return Path(folder) / name
    return None


@contextmanager
def orthanc_server(folder: Path, users: dict[str, str] | None = None) -> Iterator[str]:
    """Orthanc with the DICOMweb plugin on a free 127.0.0.1 port, storing in `folder`; yields its REST root URL.
    With `users` (name: password), it asks every request for HTTP basic authentication."""
    binary = shutil.which("Orthanc")
    plugin = orthanc_plugin()
    if binary is None or plugin is None:
        pytest.skip(
            "could not start Orthanc: Debian packages 'orthanc' and 'orthanc-dicomweb' are not installed "
            "(scripts/test.sh installs them as root with apt-get where it can)"
        )
    port = free_port()
    folder.mkdir(parents=True, exist_ok=True)
    config = {
        "Name": "mixmag-test",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "HttpPort": port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": bool(users),
        "RegisteredUsers": users or {},
        "DicomServerEnabled": False,
        "HttpCompressionEnabled": False,
        "Plugins": [str(plugin)],
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
    }
    (folder / "config.json").write_text(json.dumps(config))
    log = open(folder / "orthanc.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen([binary, str(folder / "config.json")], stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        if not _wait_http(url + "/system", 60, process):  # a 401 is an answer too
            tail = (folder / "orthanc.log").read_bytes()[-600:].decode(errors="replace")
            pytest.skip(f"could not start Orthanc on 127.0.0.1:{port} within 60 s: {tail}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        log.close()


def upload_dicom(orthanc: str, folder: Path, user: tuple[str, str] | None = None) -> tuple[str, str]:
    """POST every .dcm of a folder to Orthanc (its REST API); returns (study UID, series UID)."""
    import base64

    import pydicom

    study = series = ""
    for path in sorted(folder.glob("*.dcm")):
        request = urllib.request.Request(f"{orthanc}/instances", data=path.read_bytes(), method="POST")
        request.add_header("Content-Type", "application/dicom")
        if user is not None:
            request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
        with urllib.request.urlopen(request, timeout=60) as answer:
            assert answer.status == 200, path
        header = pydicom.dcmread(path, stop_before_pixels=True)
        study, series = str(header.StudyInstanceUID), str(header.SeriesInstanceUID)
    return study, series
