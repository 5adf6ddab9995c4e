"""Every format beyond TIFF, made from the real sample slide by the format's own writer, reads like the SVS:
same size, same mpp (from the format's metadata), same pixels (exactly where the format is lossless, within JPEG
rounding where it re-encodes), the same tiling through the CLI, and the backend named in plan.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from slide_formats import need, slide_pixels, write_czi, write_dicom, write_ome_zarr
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.errors import MppError, SlideUnreadableError
from mixmag.geometry import Box
from mixmag.slides import backends
from mixmag.slides.reader import Slide
from mixmag.slides.sources import sources_from_paths
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide

MPP = 0.499
BOX = Box(300, 400, 1200, 1300)


@pytest.fixture(scope="module")
def svs_pixels(real_svs):
    return slide_pixels(real_svs)


@pytest.fixture(scope="module")
def made(tmp_path_factory, real_svs, svs_pixels):
    """The sample slide as a DICOM folder, an OME-Zarr pyramid and a CZI (each skipped if its writer is absent)."""
    folder = tmp_path_factory.mktemp("formats")
    out = {}
    for name, make in [
        ("dicom", lambda: write_dicom(real_svs, folder / "CMU-1-dicom")),
        ("omezarr", lambda: write_ome_zarr(svs_pixels, MPP, folder / "CMU-1.ome.zarr")),
        ("czi", lambda: write_czi(svs_pixels, MPP, folder / "CMU-1.czi")),
    ]:
        try:
            out[name] = make()
        except pytest.skip.Exception:
            pass
    return out


def _get(made, name):
    if name not in made:
        need({"dicom": "wsidicomizer", "omezarr": "ome_zarr", "czi": "pylibCZIrw"}[name])
    return made[name]


def _level0(slide: Slide) -> np.ndarray:
    return slide.read_box(Box(0, 0, slide.width, slide.height), slide.mpp)


def test_dicom_folder_and_any_of_its_files_are_one_slide(made, real_svs, svs_pixels):
    folder = _get(made, "dicom")
    files = sorted(folder.glob("*.dcm"))
    assert len(files) == 4  # one file per level: 0.499, 0.998, 1.996, 3.992 um/px
    for given in ([folder], [files[-1]], files):  # the folder, any one file, or all of them: one slide
        assert [s.slide_id for s in sources_from_paths(given)] == ["CMU-1-dicom"]  # never "level_0" or a UID
    for path in (folder, *files):
        with Slide(path) as slide:
            assert slide.backend == "openslide"
            assert (slide.width, slide.height) == (2220, 2967) and len(slide.level_dimensions) == 4
            assert slide.mpp == pytest.approx(MPP) and slide.mpp_source.startswith("DICOM PixelSpacing")
    with Slide(folder) as slide:
        diff = np.abs(_level0(slide).astype(int) - svs_pixels)
        assert diff.mean() < 1.5, diff.mean()  # JPEG q95 re-encoding of the SVS's JPEG tiles


def test_dicom_folder_with_two_series_is_two_named_slides(tmp_path, real_svs):
    small = write_slide(tmp_path / "small.tiff", tissue_like(1024, 768, 0.5, seed=1), 0.5, downsamples=(1,))
    folder = tmp_path / "case-7"
    write_dicom(small, folder, description="HE")
    write_dicom(small, folder, description="HE recut")
    sources = sources_from_paths([folder])
    assert sorted(s.slide_id for s in sources) == ["case-7-HE", "case-7-HE_recut"]
    for source in sources:
        with Slide(source.path) as slide:
            assert slide.mpp == pytest.approx(0.5) and slide.width == 1024
    with pytest.raises(
        SlideUnreadableError, match="holds 2 DICOM series.*case-7-HE.*Fix: give the folder to `mixmag tile`"
    ):
        Slide(folder)


def test_ome_zarr_reads_like_the_svs(made, svs_pixels):
    path = _get(made, "omezarr")
    assert sources_from_paths([path])[0].slide_id == "CMU-1"
    with Slide(path) as slide:
        assert slide.backend == "omezarr"
        assert slide.mpp == pytest.approx(MPP) and "NGFF" in slide.mpp_source
        assert slide.level_downsamples == pytest.approx((1, 2, 4))
        assert np.array_equal(_level0(slide), svs_pixels)  # lossless
        two_x = slide.read_box(BOX, 2 * MPP)
        assert slide.plan(BOX, 2 * MPP).level == 1  # from the pyramid's own level
    ref = _reduce2(svs_pixels[400:1300, 300:1200])
    assert np.abs(two_x.astype(int) - ref).max() <= 1  # the writer's local mean = mixmag's 2x area mean


def _reduce2(a: np.ndarray) -> np.ndarray:
    h, w = a.shape[0] // 2, a.shape[1] // 2
    return np.floor(a[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).mean((1, 3)) + 0.5).astype(int)


def test_czi_reads_like_the_svs(made, svs_pixels, tmp_path):
    path = _get(made, "czi")
    with Slide(path) as slide:
        assert slide.backend == "czi"
        assert slide.mpp == pytest.approx(MPP) and "CZI Scaling" in slide.mpp_source
        assert np.array_equal(_level0(slide), svs_pixels)  # lossless, RGB order restored from Bgr24
    no_scale = write_czi(svs_pixels[:600, :500], None, tmp_path / "noscale.czi")
    with pytest.raises(MppError, match="--mpp"):
        Slide(no_scale)
    with Slide(no_scale, mpp=0.25) as slide:
        assert slide.mpp_source == "override"


def test_an_absent_extra_is_named_with_its_install_command(made, monkeypatch):
    path = _get(made, "czi")
    monkeypatch.setattr(backends, "installed", lambda name: name != "czi")
    with pytest.raises(SlideUnreadableError, match=r"pip install 'mixmag\[czi\]'"):
        Slide(path)


def test_fallback_adapter_on_formats_openslide_reads(real_svs, tmp_path):
    """slideio (adapter tested, VSI/QPTIFF/SCN/ZVI/AFI untested here): the same pixels and mpp as OpenSlide."""
    need("slideio")
    with Slide(real_svs, backend="slideio") as ours, Slide(real_svs, backend="openslide") as ref:
        assert ours.mpp == pytest.approx(ref.mpp) and ours.mpp_source == "slideio scene resolution"
        assert np.array_equal(ours.read_box(BOX, 1.0), ref.read_box(BOX, 1.0))
    image = tissue_like(2048, 1536, 0.25, seed=5, tissue_mask=np.ones((4, 4), bool))
    pyramid = write_slide(tmp_path / "pyr.svs", image, 0.25, downsamples=(1, 4), flavor="aperio", tile=256)
    with Slide(pyramid, backend="slideio") as ours, Slide(pyramid, backend="openslide") as ref:
        assert ours.level_dimensions == ref.level_dimensions
        assert ours.level_downsamples == pytest.approx(ref.level_downsamples)
        box = Box(256, 512, 256 + 1024, 512 + 1024)
        assert ours.plan(box, 1.0).level == 1
        assert np.abs(ours.read_box(box, 1.0).astype(int) - ref.read_box(box, 1.0)).mean() < 1.0


def test_every_format_tiles_and_embeds_like_the_svs(made, real_svs, tmp_path):
    """`mixmag tile` and `mixmag embed` on each format: the same grid, tissue regions and cells as the SVS, the
    backend in plan.json, and the same embeddings (equal for the lossless formats)."""
    import h5py

    runner = CliRunner()
    inputs = {"svs": real_svs} | {k: _get(made, k) for k in ("dicom", "omezarr", "czi")}
    plans, embeddings = {}, {}
    for name, path in inputs.items():
        out = tmp_path / name
        result = runner.invoke(app, ["tile", str(path), "--out", str(out), "--region-size", "1"])
        assert result.exit_code == 0, result.output
        (plan_file,) = out.glob("*/plan.json")
        plans[name] = json.loads(plan_file.read_text())
        result = runner.invoke(
            app,
            [
                "embed",
                "--plans",
                str(out),
                "--out",
                str(tmp_path / f"{name}-stores"),
                "--encoder",
                "stats",
                "--workers",
                "0",
                "--device",
                "cpu",
            ],
        )
        assert result.exit_code == 0, result.output
        (store,) = (tmp_path / f"{name}-stores").glob("*.h5")
        with h5py.File(store, "r") as h5:
            assert h5.attrs["reader_backend"] == plans[name]["slide"]["backend"]
            embeddings[name] = (h5["cells/rc"][:].tolist(), h5["emb/20x"][:].astype(np.float32))
    for name in ("omezarr", "czi"):
        assert embeddings[name][0] == embeddings["svs"][0]
        assert np.array_equal(embeddings[name][1], embeddings["svs"][1]), name
    assert embeddings["dicom"][0] == embeddings["svs"][0]
    assert np.abs(embeddings["dicom"][1] - embeddings["svs"][1]).mean() < 0.05 * np.abs(embeddings["svs"][1]).mean()
    assert {n: p["slide"]["backend"] for n, p in plans.items()} == {
        "svs": "tiffslide",
        "dicom": "openslide",
        "omezarr": "omezarr",
        "czi": "czi",
    }
    ref = plans["svs"]
    for name, plan in plans.items():
        assert (plan["n_rows"], plan["n_cols"]) == (ref["n_rows"], ref["n_cols"]) and plan["slide"][
            "mpp"
        ] == pytest.approx(MPP)
        assert plan["regions"] == ref["regions"] and plan["cells"] == ref["cells"], name
        assert np.abs(np.array(plan["tissue_grid"]) - ref["tissue_grid"]).max() < 0.05, name


def test_doctor_reports_every_kind_of_input_without_a_traceback(made, real_svs, tmp_path):
    folder = _get(made, "dicom")
    no_mpp = write_slide(tmp_path / "nompp.tiff", tissue_like(600, 500, 0.5, seed=2), None, downsamples=(1,))
    dpi72 = write_slide(
        tmp_path / "dpi72.tiff", tissue_like(600, 500, 0.5, seed=2), None, downsamples=(1,), resolution_dpi=72
    )
    truncated = tmp_path / "truncated.svs"
    truncated.write_bytes(real_svs.read_bytes()[:300_000])
    result = CliRunner().invoke(app, ["doctor", str(real_svs), str(folder), str(no_mpp), str(dpi72), str(truncated)])
    out = result.output
    assert result.exit_code == 1, out
    assert "Traceback" not in out
    assert "CMU-1-dicom" in out and "DICOM PixelSpacing" in out and "reads it with openslide" in out
    assert "tiffslide: chosen" in out and "pixels vs tiffslide: mean |difference| 0.00" in out
    assert out.count("cannot tile it") == 3 and "no microns-per-pixel" in out and "352.8" in out and "truncated" in out
    ok = CliRunner().invoke(app, ["doctor", str(real_svs)])
    assert ok.exit_code == 0, ok.output


_WITHOUT_EXTRAS = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ('pylibCZIrw', '_pylibCZIrw', 'slideio'):
            raise ImportError(name + ' blocked')
sys.meta_path.insert(0, Block())
import mixmag.cli
from mixmag.slides.reader import Slide, preferred_backends
from mixmag.slides.doctor import installed_backends
with Slide(sys.argv[1]) as slide:
    print(slide.backend, slide.mpp)
print(preferred_backends(type(slide.path)('x.czi')), [row[:2] for row in installed_backends()])
"""


def test_mixmag_works_without_the_optional_extras(real_svs):
    import subprocess
    import sys

    run = subprocess.run(
        [sys.executable, "-c", _WITHOUT_EXTRAS, str(real_svs)], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "tiffslide 0.499"
    assert lines[1].startswith("[] ") and "('czi', False)" in lines[1] and "('slideio', False)" in lines[1]


@pytest.mark.parametrize("version, unit, mpp", [("0.4", "micrometer", 0.25), ("0.5", "nanometer", 263.1)])
def test_ome_zarr_versions_and_units(tmp_path, version, unit, mpp):
    image = tissue_like(640, 512, 0.25, seed=3)
    path = write_ome_zarr(image, mpp, tmp_path / f"v{version}.ome.zarr", 2, version=version, unit=unit)
    with Slide(path) as slide:
        assert slide.mpp == pytest.approx(0.25 if unit == "micrometer" else 0.2631)
        assert slide.level_dimensions == ((640, 512), (320, 256))
        assert np.array_equal(_level0(slide), image)


def test_unusable_inputs_are_one_sentence(tmp_path, real_svs):
    no_unit = write_ome_zarr(tissue_like(320, 256, 0.5, seed=3), 0.5, tmp_path / "nounit.ome.zarr", 1, unit=None)
    with pytest.raises(MppError, match="no microns-per-pixel.*--mpp"):
        Slide(no_unit)
    assert Slide(no_unit, mpp=0.5).mpp_source == "override"
    empty = tmp_path / "empty-folder"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a slide")
    with pytest.raises(SlideUnreadableError, match="no reader for this kind of folder"):
        Slide(empty)


def test_a_damaged_dicom_file_beside_a_series_is_left_out(made, tmp_path):
    folder = tmp_path / "damaged"
    folder.mkdir()
    for f in _get(made, "dicom").glob("*.dcm"):
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 200)
    assert [s.slide_id for s in sources_from_paths([folder])] == ["damaged"]
    with Slide(folder) as slide:
        assert slide.width == 2220


def test_a_folder_of_slides_is_expanded_to_every_slide_under_it(tmp_path, made, real_svs):
    import shutil

    from mixmag.errors import CohortError

    root = tmp_path / "cohort"
    (root / "site-a").mkdir(parents=True)
    shutil.copy(real_svs, root / "site-a" / "x.svs")
    write_slide(root / "site-b" / "y.tiff", tissue_like(512, 384, 0.5, seed=2), 0.5, downsamples=(1,))
    (root / "site-b" / "case.mrxs").write_bytes(b"")  # an MRXS slide and its data folder, never searched
    write_slide(root / "site-b" / "case" / "inner.tiff", tissue_like(256, 256, 0.5, seed=3), 0.5, downsamples=(1,))
    (root / ".trash").mkdir()
    shutil.copy(real_svs, root / ".trash" / "old.svs")
    (root / "notes.txt").write_text("not a slide")
    expected = ["case", "x", "y"]
    for name in ("dicom", "omezarr"):  # a DICOM folder and an OME-Zarr folder are one slide each, not searched
        if name in made:
            shutil.copytree(made[name], root / "site-c" / made[name].name)
            expected.append({"dicom": "CMU-1-dicom", "omezarr": "CMU-1"}[name])
    sources = sources_from_paths([root])
    assert sorted(s.slide_id for s in sources) == sorted(expected)
    assert all(".trash" not in str(s.path) and "inner" not in str(s.path) for s in sources)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(CohortError, match="empty: a folder with no slide in it"):
        sources_from_paths([tmp_path / "empty"])
    result = CliRunner().invoke(app, ["tile", str(tmp_path / "empty"), "--out", str(tmp_path / "t")])
    assert (
        result.exit_code != 0 and "a folder with no slide in it" in result.output and "Traceback" not in result.output
    )
