"""Slides read from a DICOMweb server (issue 28 §2): the test slide made into a DICOM WSI (wsidicomizer), uploaded to a
real Orthanc with its DICOMweb plugin started here on 127.0.0.1, then tiled and embedded through wsidicom's DICOMweb
client: the same regions and embeddings as the same DICOM files read from a local folder (by OpenSlide)."""

from __future__ import annotations

import json
import logging
import urllib.request

import h5py
import numpy as np
import pytest
from remote_servers import environment, orthanc_server, silent_server, upload_dicom
from slide_formats import write_dicom
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.errors import SlideError
from mixmag.slides.reader import Slide
from mixmag.slides.remote import RemoteAccessError, SlideChangedError
from mixmag.slides.tiling import load_plan

pytestmark = pytest.mark.filterwarnings("ignore:No bulk data URI handler")  # pydicom, on Orthanc's metadata


@pytest.fixture(scope="module")
def dicom_folder(real_svs, tmp_path_factory):
    pytest.importorskip("wsidicom", reason="wsidicom is not installed: pip install 'mixmag[remote]'")
    return write_dicom(real_svs, tmp_path_factory.mktemp("dicom") / "CMU-1-dicom")


@pytest.fixture(scope="module")
def orthanc(dicom_folder, tmp_path_factory):
    """(REST root, slide URL, study UID, series UID) of the DICOM slide on a fresh Orthanc."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as root:
        study, series = upload_dicom(root, dicom_folder)
        yield root, f"dicomweb+{root}/dicom-web/studies/{study}/series/{series}", study, series


def _tile(args, out):
    return CliRunner().invoke(app, ["tile", *args, "--out", str(out), "--region-size", "1"])


def _embed(plans, out):
    args = ["embed", "--plans", str(plans), "--out", str(out), "--encoder", "stats", "--device", "cpu"]
    return CliRunner().invoke(app, [*args, "--workers", "0"])


def _store(folder):
    (store,) = folder.glob("*.h5")
    with h5py.File(store, "r") as h5:
        return h5["cells/rc"][:], {k: h5[f"emb/{k}"][:] for k in h5["emb"]}, dict(h5.attrs)


def test_a_dicomweb_series_tiles_and_embeds_like_the_local_dicom_folder(orthanc, dicom_folder, tmp_path):
    _, url, _, series = orthanc
    for name, target in (("local", dicom_folder), ("web", url)):
        result = _tile([str(target)], tmp_path / name / "tiles")
        assert result.exit_code == 0, result.output
        result = _embed(tmp_path / name / "tiles", tmp_path / name / "stores")
        assert result.exit_code == 0, result.output
    (local_plan,) = (tmp_path / "local/tiles").glob("*/plan.json")
    web_plan = tmp_path / "web/tiles" / series / "plan.json"  # no 'slide' column: the series UID is the id
    a, b = json.loads(local_plan.read_text()), json.loads(web_plan.read_text())
    assert (a["slide"]["backend"], b["slide"]["backend"]) == ("openslide", "dicomweb")
    assert b["slide"]["path"] == url and b["slide"]["etag"] and b["slide"]["mpp"] == a["slide"]["mpp"]
    assert b["slide"]["level_downsamples"] == a["slide"]["level_downsamples"]
    for key in ("tissue_grid", "cells", "regions", "n_rows", "n_cols", "cell_px"):
        assert a[key] == b[key], key
    assert a["regions"]
    rc_a, emb_a, _ = _store(tmp_path / "local/stores")
    rc_b, emb_b, attrs_b = _store(tmp_path / "web/stores")
    assert np.array_equal(rc_a, rc_b) and attrs_b["reader_backend"] == "dicomweb"
    assert all(np.array_equal(emb_a[k], emb_b[k]) for k in emb_a)  # the same JPEG frames, decoded alike


def test_a_cohort_row_names_the_server_and_the_uids(orthanc, tmp_path):
    root, url, study, series = orthanc
    table = tmp_path / "cohort.csv"
    table.write_text(f"slide,dicomweb,study_uid,series_uid\ncmu,{root}/dicom-web,{study},{series}\n")
    result = CliRunner().invoke(app, ["tile", "--cohort", str(table), "--out", str(tmp_path), "--region-size", "1"])
    assert result.exit_code == 0, result.output
    assert load_plan(tmp_path / "cmu").slide.path == url
    again = CliRunner().invoke(app, ["tile", "--cohort", str(table), "--out", str(tmp_path), "--region-size", "1"])
    assert again.exit_code == 0 and "skipped (plan is current)" in again.output


def test_a_series_the_server_does_not_hold_is_one_sentence(orthanc, tmp_path):
    root, _, study, _ = orthanc
    url = f"dicomweb+{root}/dicom-web/studies/{study}/series/1.2.3.4"
    with pytest.raises(SlideError, match="no such study or series|no instances in this series"):
        Slide(url)
    result = _tile([url], tmp_path)
    assert result.exit_code == 1 and "Traceback" not in result.output
    with pytest.raises(SlideError, match="not a DICOMweb series address"):
        Slide(f"dicomweb+{root}/dicom-web/studies/{study}")


def test_a_series_changed_after_tiling_is_refused(dicom_folder, tmp_path):
    """A series that lost an instance (a level) since tiling is another image: embedding refuses it."""
    logging.getLogger("pydicom").setLevel(logging.ERROR)
    with orthanc_server(tmp_path / "orthanc") as root:
        study, series = upload_dicom(root, dicom_folder)
        url = f"dicomweb+{root}/dicom-web/studies/{study}/series/{series}"
        assert _tile([url], tmp_path / "tiles").exit_code == 0
        with urllib.request.urlopen(f"{root}/series") as answer:
            (series_id,) = json.load(answer)
        with urllib.request.urlopen(f"{root}/series/{series_id}/instances") as answer:
            smallest = min(json.load(answer), key=lambda i: i["FileSize"])
        urllib.request.urlopen(urllib.request.Request(f"{root}/instances/{smallest['ID']}", method="DELETE")).close()
        with pytest.raises(SlideChangedError, match="changed since it was tiled"):
            load_plan(tmp_path / "tiles" / series).open_slide()
        result = _embed(tmp_path / "tiles", tmp_path / "stores")
        assert result.exit_code != 0 and "changed since it was tiled" in " ".join(result.output.split())


def test_a_server_that_wants_credentials_gets_them_from_the_environment(dicom_folder, tmp_path):
    with orthanc_server(tmp_path / "orthanc", users={"reader": "s3cret"}) as root:
        study, series = upload_dicom(root, dicom_folder, user=("reader", "s3cret"))
        url = f"dicomweb+{root}/dicom-web/studies/{study}/series/{series}"
        with pytest.raises(RemoteAccessError, match=r"refused access \(HTTP 401\).*MIXMAG_DICOMWEB_USER"):
            Slide(url)
        with environment(MIXMAG_DICOMWEB_USER="reader", MIXMAG_DICOMWEB_PASSWORD="wrong"):
            with pytest.raises(RemoteAccessError, match="refused access"):
                Slide(url)
        with environment(MIXMAG_DICOMWEB_USER="reader", MIXMAG_DICOMWEB_PASSWORD="s3cret"):
            with Slide(url) as slide:
                assert slide.backend == "dicomweb" and slide.width == 2220
            assert _tile([url], tmp_path / "tiles").exit_code == 0
        assert "s3cret" not in (tmp_path / "tiles" / series / "plan.json").read_text()


def test_a_dicomweb_server_that_does_not_answer_is_a_timeout_sentence():
    with silent_server() as root, environment(MIXMAG_REMOTE_TIMEOUT="1"):
        with pytest.raises(RemoteAccessError, match="did not answer within 1 s"):
            Slide(f"dicomweb+{root}/dicom-web/studies/1.2.3/series/1.2.3.4")
