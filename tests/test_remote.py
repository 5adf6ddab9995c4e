"""Slides read from object storage by URL (issue 28 §1), against a real S3 server started here on 127.0.0.1 (moto's
server mode): the same plans, tiles and stores as the local file (bit for bit: the same reader on the same bytes),
credentials and endpoint from the environment, one sentence for each failure a network brings, and a slide that
changed between tiling and embedding refused."""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
from remote_servers import S3_ENV, environment, s3_server, silent_server, strict_s3_server
from typer.testing import CliRunner

import mixmag
from mixmag.cli import app
from mixmag.errors import SlideError
from mixmag.slides.pyramids import read_pyramid
from mixmag.slides.reader import Slide
from mixmag.slides.remote import RemoteAccessError, SlideChangedError
from mixmag.slides.tiling import load_plan
from mixmag.stages.predict import read_inputs

BUCKET = "slides"


@pytest.fixture(scope="module")
def s3(real_svs):
    """An S3 endpoint holding the test slide at s3://slides/cmu/CMU-1-Small-Region.svs; env set as a user's would be."""
    with s3_server() as endpoint, environment(**S3_ENV, AWS_ENDPOINT_URL=endpoint, MIXMAG_REMOTE_TIMEOUT="20"):
        import s3fs

        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        fs.mkdir(BUCKET)
        fs.put(str(real_svs), f"{BUCKET}/cmu/CMU-1-Small-Region.svs")
        yield fs


URL = f"s3://{BUCKET}/cmu/CMU-1-Small-Region.svs"


def _tile(target, out, *extra):
    return CliRunner().invoke(app, ["tile", str(target), "--out", str(out), "--region-size", "1", *extra])


def _embed(plans, out, *extra):
    args = ["embed", "--plans", str(plans), "--out", str(out), "--encoder", "stats", "--device", "cpu"]
    return CliRunner().invoke(app, [*args, "--workers", "0", *extra])


def _store(folder):
    (store,) = folder.glob("*.h5")
    with h5py.File(store, "r") as h5:
        return h5["cells/rc"][:], {k: h5[f"emb/{k}"][:] for k in h5["emb"]}, dict(h5.attrs)


def test_a_slide_in_s3_tiles_and_embeds_bit_for_bit_like_the_local_file(s3, real_svs, tmp_path):
    local, remote = tmp_path / "local", tmp_path / "remote"
    for target, out in ((real_svs, local), (URL, remote)):
        result = _tile(target, out / "tiles")
        assert result.exit_code == 0, result.output
        result = _embed(out / "tiles", out / "stores", "--workers", "1")  # a DataLoader worker reads over the network
        assert result.exit_code == 0, result.output
    a = json.loads((local / "tiles/CMU-1-Small-Region/plan.json").read_text())
    b = json.loads((remote / "tiles/CMU-1-Small-Region/plan.json").read_text())
    assert b["slide"]["path"] == URL and b["slide"]["backend"] == a["slide"]["backend"] == "tiffslide"
    assert b["slide"]["size_bytes"] == real_svs.stat().st_size and b["slide"]["etag"]
    for key in ("tissue_grid", "cells", "cell_tissue", "regions", "region_tissue", "n_rows", "n_cols", "cell_px"):
        assert a[key] == b[key], key
    assert a["regions"]  # the comparison is about something
    rc_a, emb_a, attrs_a = _store(local / "stores")
    rc_b, emb_b, attrs_b = _store(remote / "stores")
    assert np.array_equal(rc_a, rc_b)
    assert emb_a.keys() == emb_b.keys() and all(np.array_equal(emb_a[k], emb_b[k]) for k in emb_a)
    assert attrs_b["slide_path"] == URL and attrs_b["reader_backend"] == "tiffslide"


def test_remote_tiles_are_the_local_tiles(s3, real_svs, tmp_path):
    """The pixels themselves, every level of a cell, read through range requests and from disk."""
    assert _tile(URL, tmp_path).exit_code == 0
    plan = load_plan(tmp_path / "CMU-1-Small-Region")
    with plan.open_slide() as remote, Slide(real_svs, backend="tiffslide") as local:
        assert remote.path == URL and remote.fingerprint()["etag"] == plan.slide.etag
        for row, col in plan.cells[:4]:
            a = read_pyramid(local, plan.grid, plan.levels, row, col)
            b = read_pyramid(remote, plan.grid, plan.levels, row, col)
            assert all(np.array_equal(x, y) for x, y in zip(a.tiles, b.tiles))


def test_a_cohort_table_names_slides_by_url_and_a_rerun_skips_them(s3, tmp_path):
    table = tmp_path / "cohort.csv"
    table.write_text(f"slide,path\ncmu,{URL}\n")
    out = tmp_path / "tiles"
    result = CliRunner().invoke(app, ["tile", "--cohort", str(table), "--out", str(out), "--region-size", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "cmu/plan.json").read_text())["slide"]["path"] == URL
    again = CliRunner().invoke(app, ["tile", "--cohort", str(table), "--out", str(out), "--region-size", "1"])
    assert again.exit_code == 0 and "skipped (plan is current)" in again.output


def test_a_slide_replaced_between_tiling_and_embedding_is_refused(s3, real_pyramid, tmp_path):
    url = f"s3://{BUCKET}/moving/slide.svs"
    s3.put(str(real_pyramid.parent / "CMU-1-Small-Region.svs"), url)
    assert _tile(url, tmp_path / "tiles").exit_code == 0
    s3.put(str(real_pyramid), url)  # another file under the same key: other size and ETag
    result = _embed(tmp_path / "tiles", tmp_path / "stores")
    assert result.exit_code != 0
    said = " ".join(result.output.split())
    assert "changed since it was tiled" in said and "re-run `mixmag tile`" in said, said
    assert not list((tmp_path / "stores").glob("*.h5"))
    with pytest.raises(SlideChangedError, match="size 1938955 -> "):
        load_plan(tmp_path / "tiles/slide").open_slide()


def test_openslide_formats_need_the_download_cache(s3, real_svs, tmp_path):
    """OpenSlide reads local files only: by URL it is one sentence naming --cache; with --cache DIR the slide is
    downloaded once and read from there, and the plan still names the URL."""
    result = _tile(URL, tmp_path / "a", "--backend", "openslide")
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "--cache DIR" in said, said
    ndpi = f"s3://{BUCKET}/vendor/slide.ndpi"
    with pytest.raises(SlideError, match="this format is only read from a local file"):
        s3.put(str(real_svs), ndpi)
        Slide(ndpi)
    cache = tmp_path / "cache"
    result = _tile(URL, tmp_path / "b", "--backend", "openslide", "--cache", str(cache))
    assert result.exit_code == 0, result.output
    assert "MIXMAG_SLIDE_CACHE" not in os.environ  # the command's setting, not left behind in the caller's process
    (copy,) = [p for p in cache.rglob("*") if p.is_file()]
    assert copy.read_bytes() == real_svs.read_bytes()
    plan = json.loads((tmp_path / "b/CMU-1-Small-Region/plan.json").read_text())
    assert plan["slide"]["path"] == URL and plan["slide"]["backend"] == "openslide"
    refused = _embed(tmp_path / "b", tmp_path / "stores")  # the plan's backend reads local files only
    assert refused.exit_code != 0 and "--cache DIR" in " ".join(refused.output.split())
    result = _embed(tmp_path / "b", tmp_path / "stores", "--cache", str(cache))  # the copy downloaded by `tile`
    assert result.exit_code == 0, result.output
    assert len([p for p in cache.rglob("*") if p.is_file()]) == 1


@pytest.mark.parametrize(
    "url, sentence",
    [
        ("s3://no-such-bucket/a.svs", "the storage has no such bucket"),
        (f"s3://{BUCKET}/cmu/missing.svs", "no such object in the storage"),
    ],
)
def test_missing_buckets_and_objects_are_one_sentence(s3, url, sentence, tmp_path):
    with pytest.raises(RemoteAccessError, match=sentence):
        Slide(url)
    result = _tile(url, tmp_path)
    assert result.exit_code == 1 and sentence in " ".join(result.output.split())
    assert "Traceback" not in result.output


def test_refused_credentials_are_one_sentence(real_svs):
    with strict_s3_server() as endpoint, environment(**S3_ENV, AWS_ENDPOINT_URL=endpoint):
        with pytest.raises(RemoteAccessError, match="the storage refused access .*check the credentials"):
            Slide(URL)


def test_a_storage_that_does_not_answer_is_a_timeout_sentence():
    with silent_server() as endpoint, environment(**S3_ENV, AWS_ENDPOINT_URL=endpoint, MIXMAG_REMOTE_TIMEOUT="1"):
        with pytest.raises(RemoteAccessError, match=r"did not answer within 1 s.*MIXMAG_REMOTE_TIMEOUT"):
            Slide(URL)


def test_unknown_url_schemes_are_refused_by_name(tmp_path):
    result = _tile("ftp://host/slide.svs", tmp_path)
    assert result.exit_code != 0 and "'ftp://' is not a slide location" in " ".join(result.output.split())


def test_a_slide_served_over_http_reads_by_range_like_the_local_file(s3, real_svs, tmp_path):
    """https:// and http:// go through fsspec's HTTP client: here the S3 server's plain object URLs, one object public
    (read by range requests, the same plan as the local file) and one private (403: refused in one sentence)."""
    endpoint = os.environ["AWS_ENDPOINT_URL"]
    s3.put(str(real_svs), f"{BUCKET}/public/CMU-1-Small-Region.svs")
    s3.chmod(f"{BUCKET}/public/CMU-1-Small-Region.svs", "public-read")
    url = f"{endpoint}/{BUCKET}/public/CMU-1-Small-Region.svs"
    assert _tile(url, tmp_path / "web").exit_code == 0
    assert _tile(real_svs, tmp_path / "local").exit_code == 0
    a = load_plan(tmp_path / "local/CMU-1-Small-Region")
    b = load_plan(tmp_path / "web/CMU-1-Small-Region")
    assert b.slide.path == url and b.slide.etag and (a.cells, a.regions) == (b.cells, b.regions)
    assert a.tissue_grid == b.tissue_grid
    with pytest.raises(RemoteAccessError, match="the storage refused access"):
        Slide(f"{endpoint}/{URL.removeprefix('s3://')}")  # the same object, not public


def test_doctor_predict_and_the_python_api_take_urls(s3, tmp_path):
    result = CliRunner().invoke(app, ["doctor", URL, "--region-size", "1"])
    said = " ".join(result.output.split())
    assert result.exit_code == 0 and "reads it with tiffslide at 0.499 um/px" in said, said
    assert "a TIFF by URL: TiffSlide reads its tiles by range requests" in said
    (source,) = read_inputs([URL], None, None).sources
    assert (source.path, source.slide_id) == (URL, "CMU-1-Small-Region")
    (tiled,) = mixmag.tile(URL, tmp_path, region_size=1)
    assert tiled.outcome == "tiled" and tiled.plan.slide.path == URL


def test_only_the_byte_ranges_read_are_fetched(s3, tmp_path):
    """Never a full download unless asked: a cell of an 18 MB slide fetches a fraction of it."""
    from mixmag.geometry import Box
    from mixmag.synth.slide_writer import write_slide

    noise = np.random.default_rng(0).integers(0, 255, (4096, 4096, 3), dtype=np.uint8)  # incompressible: a big file
    path = write_slide(tmp_path / "noise.tiff", noise, 0.5)
    s3.put(str(path), f"{BUCKET}/big/noise.tiff")
    box = Box(1000, 1000, 1896, 1896)
    with Slide(f"s3://{BUCKET}/big/noise.tiff") as remote, Slide(path) as local:
        assert np.array_equal(remote.read_box(box, 0.5), local.read_box(box, 0.5))
        fetched = remote._handle._file.cache.total_requested_bytes  # fsspec's block cache counts what it fetched
    assert 0 < fetched < 0.6 * path.stat().st_size, (fetched, path.stat().st_size)
