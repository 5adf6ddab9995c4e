"""Decompression bombs (issue 22 §5): files of a few kB or MB that declare gigabytes. A checkpoint whose one deflated
zip record expands to 8 GiB, a PNG beside a plan that declares 30000 x 30000 px, a JPEG tile declaring 20000 x 20000 px
inside a 256 x 256 px tile, a TIFF strip of 400 Mpx and a TIFF of 10^6 x 10^6 px (a 500 mm slide) are each refused
from what they declare, before anything is decoded: one sentence naming the file and the fix, the process's peak
memory does not grow by the gigabytes asked for, and nothing outside the output folder changes.

The bombs are built here without writing what they expand to: a deflate block of one MiB of zeros, ended by a full
flush so that it stands alone, is repeated (the checkpoint, the PNG), and TIFFs are written with their tiles' bytes
given (the tile offsets of the 10^6 px slide all point at one real tile).

On main before bounded decoding (5497438) every test here failed (checkpoints: torch inflated the record; PNGs: peak
memory grew by 2.5 GiB; JPEG tile and strip: by 1.1 and 1.9 GiB; the 500 mm and 1.2 x 10^6 px slides were tiled)
except the two that check the probes themselves and the safetensors one, which guards what safetensors already did.
The JPEG-strip and JPEG 2000 tile bombs and the attribution .npz came later; they fail on that main too (there
`mixmag doctor` peaked at 3.1 and 9.0 GB on the two TIFFs: tifffile, then slideio, decoded 20000 x 20000 px)."""

from __future__ import annotations

import io
import json
import resource
import shutil
import struct
import zipfile
import zlib
from dataclasses import asdict
from pathlib import Path

import h5py
import imagecodecs
import numpy as np
import pytest
import tifffile
import torch
from test_interop import make_plan
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.errors import TissueModelError
from mixmag.images import PictureError, read_picture
from mixmag.models.mixer import mixer_config
from mixmag.slides.reader import Slide, SlideTooLargeError
from mixmag.slides.tissue import load_tissue_model
from mixmag.store import write_store
from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.synth.slide_writer import write_slide
from mixmag.synth.stores import synthetic_store
from mixmag.train.finetune import run_training
from mixmag.weights_io import UnsafeCheckpointError, WeightsFileError, load_state_dict_file, load_torch_weights

MiB, GiB = 1 << 20, 1 << 30


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _one_sentence(result, *needles: str, code: int = 2) -> None:
    """The CLI stopped with `code` and said it in one `error:` line holding every needle, with no traceback."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    if code == 2:
        errors = [line for line in result.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.output
        text = errors[0]
    else:
        text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, (needle, result.output)


def _snapshot(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _changed_outside(root: Path, before: dict[Path, int], *allowed: Path) -> list[Path]:
    """Files under root that are new, changed or gone since `before`, outside the allowed folders (a stores folder's
    catalog, `mixmag-catalog.*`, is that folder's own index, kept up to date by whichever command reads it)."""
    now = _snapshot(root)
    changed = {p for p in now.keys() | before.keys() if now.get(p) != before.get(p)}
    return sorted(
        p for p in changed if not any(p.is_relative_to(a) for a in allowed) and "mixmag-catalog" not in p.name
    )


@pytest.fixture
def peak_memory():
    """Asserts, after the test, that the process's peak resident memory grew by less than 1 GiB: the bombs ask for
    1-8 GiB, so a decode that starts would show (the peak only grows, so this never fails for earlier tests' sake)."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    assert grown < GiB, f"peak memory grew by {grown / GiB:.1f} GiB"


# -- building bombs cheaply -------------------------------------------------------------------------------------------


def _deflated_zeros(size: int, prefix: bytes = b"") -> bytes:
    """Raw deflate data that inflates to `prefix` then `size` zero bytes (a multiple of 1 MiB), made in milliseconds."""
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = head.compress(prefix) + head.flush(zlib.Z_FULL_FLUSH) if prefix else b""
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    one_mib = block.compress(bytes(MiB)) + block.flush(zlib.Z_FULL_FLUSH)
    return start + one_mib * (size // MiB) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def _crc32_of_zeros(size: int, crc: int = 0) -> int:
    chunk = bytes(64 * MiB)
    for _ in range(size // len(chunk)):
        crc = zlib.crc32(chunk, crc)
    return zlib.crc32(bytes(size % len(chunk)), crc)


def _write_zip64(path: Path, records: list[tuple[str, bytes, int, int, int]]) -> Path:
    """A zip (zip64 sizes) of (name, data as stored, method, crc, uncompressed size) records; zipfile cannot store
    data that is already deflated, so the headers are written here (APPNOTE.TXT 4.3.7, 4.3.12, 4.3.14-16, 4.5.3)."""
    out, central = bytearray(), bytearray()
    for name, data, method, crc, size in records:
        raw, offset = name.encode(), len(out)
        extra = struct.pack("<HHQQ", 1, 16, size, len(data))
        out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, method, 0, 0, crc, 2**32 - 1, 2**32 - 1, len(raw), 32)
        out += raw + extra + data
        extra = struct.pack("<HHQQQ", 1, 24, size, len(data), offset)
        central += struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, method, 0, 0, crc, 2**32 - 1, 2**32 - 1, len(raw), 28, 0, 0,
            0, 0, 2**32 - 1
        )  # fmt: skip
        central += raw + extra
    start, n = len(out), len(records)
    out += central
    end64 = len(out)
    out += struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), start)
    out += struct.pack("<IIQI", 0x07064B50, 0, end64, 1)
    out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 2**32 - 1, 2**32 - 1, 0)
    path.write_bytes(bytes(out))
    return path


def _checkpoint_bomb(path: Path, state=None, size: int = 8 * GiB) -> Path:
    """`state` saved by torch.save, its first tensor record replaced by one deflated record of `size` zero bytes."""
    buffer = io.BytesIO()
    torch.save(state if state is not None else {"w": torch.zeros(1)}, buffer)
    records, replaced = [], False
    with zipfile.ZipFile(buffer) as archive:
        for info in archive.infolist():
            data = archive.read(info)
            if "/data/" in info.filename and not replaced:
                data, method, crc = _deflated_zeros(size), zipfile.ZIP_DEFLATED, _crc32_of_zeros(size)
                records.append((info.filename, data, method, crc, size))
                replaced = True
            else:
                records.append((info.filename, data, zipfile.ZIP_STORED, zlib.crc32(data), len(data)))
    return _write_zip64(path, records)


def _png_bomb(path: Path, side: int = 30000) -> Path:
    """A valid grey PNG of side x side black pixels (0.9 GB decoded) in under 1 MB."""
    raw_size = (side + 1) * side  # a filter byte, then the row
    whole, rest = divmod(raw_size, MiB)
    block = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = _deflated_zeros(whole * MiB)[:-2] + block.compress(bytes(rest)) + block.flush()  # [:-2]: the empty end
    adler = ((raw_size % 65521) << 16) | 1  # Adler-32 of zeros: a = 1, b = n
    idat = b"\x78\xda" + stream + struct.pack(">I", adler)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def _first_tile_sof(path: Path, width: int, height: int) -> Path:
    """Rewrite the frame size in the JPEG header of a TIFF's first tile (or strip)."""
    with tifffile.TiffFile(path) as tif:
        start, count = tif.pages[0].dataoffsets[0], tif.pages[0].databytecounts[0]
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0", start, start + count)
    assert sof > 0
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def _jpeg_tile_bomb(path: Path) -> Path:
    """A 256 x 256 px JPEG-tiled TIFF at 0.5 um/px whose one tile's JPEG declares 20000 x 20000 px (~2 kB)."""
    write_slide(path, np.full((256, 256, 3), 230, np.uint8), 0.5, downsamples=(1,), tile=256)
    return _first_tile_sof(path, 20000, 20000)


def _ycbcr_jpeg(side: int) -> bytes:
    return imagecodecs.jpeg8_encode(
        np.full((side, side, 3), 230, np.uint8), level=90, subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR"
    )


def _strip_bomb(path: Path, side: int = 20000) -> Path:
    """A TIFF at 0.5 um/px (10 mm a side) stored in one JPEG strip of side x side px, 1 kB in all."""
    small = _ycbcr_jpeg(16)
    kw = dict(compression="jpeg", photometric="ycbcr", subsampling=(2, 2), metadata=None)
    tifffile.imwrite(
        path, iter([small]), shape=(side, side, 3), dtype=np.uint8, rowsperstrip=side, resolution=(2e4, 2e4),
        resolutionunit="CENTIMETER", **kw
    )  # fmt: skip
    return _first_tile_sof(path, side, side)


def _small_strips_bomb(path: Path, side: int = 2048, rows: int = 16) -> Path:
    """A 2048 x 2048 px TIFF at 0.5 um/px in JPEG strips of 16 rows, the first of which declares 20000 x 20000 px: read
    through tifffile (strips are not read directly), which hands libjpeg no size to hold it to."""
    strip = imagecodecs.jpeg8_encode(
        np.full((rows, side, 3), 230, np.uint8), level=90, subsampling=(2, 2), colorspace="RGB", outcolorspace="YCBCR"
    )
    kw = dict(compression="jpeg", photometric="ycbcr", subsampling=(2, 2), metadata=None)
    tifffile.imwrite(
        path, iter([strip] * (side // rows)), shape=(side, side, 3), dtype=np.uint8, rowsperstrip=rows,
        resolution=(2e4, 2e4), resolutionunit="CENTIMETER", **kw
    )  # fmt: skip
    return _first_tile_sof(path, 20000, 20000)


def _jpeg2000_tile_bomb(path: Path) -> Path:
    """A 256 x 256 px JPEG 2000-tiled TIFF whose tile's codestream declares 20000 x 20000 px (its SIZ marker); slideio
    decodes it (9 GB), so no backend may be tried after the first that finds it."""
    tifffile.imwrite(
        path, np.full((256, 256, 3), 230, np.uint8), tile=(256, 256), compression="jpeg2000", photometric="rgb",
        resolution=(2e4, 2e4), resolutionunit="CENTIMETER", metadata=None
    )  # fmt: skip
    with tifffile.TiffFile(path) as tif:
        start = tif.pages[0].dataoffsets[0]
    data = bytearray(path.read_bytes())
    assert data[start : start + 4] == b"\xff\x4f\xff\x51"  # SOC, SIZ: Lsiz, Rsiz, then Xsiz and Ysiz
    struct.pack_into(">II", data, start + 8, 20000, 20000)
    path.write_bytes(bytes(data))
    return path


def _huge_slide(path: Path, side: int, mpp: float | None, tile: int = 4096) -> Path:
    """A JPEG-tiled TIFF of side x side px whose tile offsets all point at one real tile (well under 1 MB)."""
    n = (-(-side // tile)) ** 2
    resolution = dict(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER") if mpp else {}
    tiles = (_ycbcr_jpeg(tile) if i == 0 else b"" for i in range(n))
    tifffile.imwrite(
        path, tiles, shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
        photometric="ycbcr", subsampling=(2, 2), metadata=None, **resolution
    )  # fmt: skip
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tags = tif.pages[0].tags
        offset, count = tags["TileOffsets"].value[0], tags["TileByteCounts"].value[0]
        tags["TileOffsets"].overwrite([offset] * n)
        tags["TileByteCounts"].overwrite([count] * n)
    return path


# -- checkpoints ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bomb_run")
    write_embedding_cohort(d, n_specimens=16, seed=3, signal=2.5)
    run_training(train_config(d, d / "run", epochs=1))
    return d


@pytest.fixture(scope="module")
def bomb_pt(tmp_path_factory) -> Path:
    """An 8.5 MB checkpoint whose one record inflates to 8 GiB."""
    return _checkpoint_bomb(tmp_path_factory.mktemp("bomb") / "bomb.pt")


def test_the_checkpoint_bomb_is_what_it_claims(bomb_pt):
    """The probe itself: under 9 MB on disk, 8 GiB declared by one deflated record (so the refusals below are real)."""
    assert bomb_pt.stat().st_size < 9 * MiB
    with zipfile.ZipFile(bomb_pt) as archive:
        big = max(archive.infolist(), key=lambda r: r.file_size)
    assert big.compress_type == zipfile.ZIP_DEFLATED and big.file_size == 8 * GiB


@pytest.mark.parametrize("command", ["predict", "report"])
def test_a_best_pt_bomb_is_refused_before_torch_load(command, trained_run, bomb_pt, tmp_path, peak_memory):
    run = tmp_path / "run"
    shutil.copytree(trained_run / "run", run)
    shutil.copy(bomb_pt, run / "best.pt")
    before = _snapshot(tmp_path)
    if command == "predict":
        result = _invoke("predict", "--run", run, "--stores", trained_run / "stores", "--out", tmp_path / "p" / "p.csv")
    else:
        result = _invoke("report", run)
    _one_sentence(result, f"{run / 'best.pt'} is not a safe checkpoint", "a decompression bomb", "8.0 GiB")
    assert _changed_outside(tmp_path, before, tmp_path / "p") == []


def test_a_last_pt_bomb_stops_a_pretraining_resume(bomb_pt, tmp_path, peak_memory):
    stores = tmp_path / "stores"
    stores.mkdir()
    write_store(stores / "s0.h5", synthetic_store("s0", seed=0, n_rows=6, n_cols=6))
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copy(bomb_pt, out / "checkpoints" / "last.pt")
    config = tmp_path / "p.yaml"
    config.write_text(
        f"stores: {stores}\nout: {out}\npreset: tiny\nbatch_size: 4\nsteps: 2\nprecision: fp32\nworkers: 0\n"
        "tensorboard: false\npeak_tflops: 1.0\n"
    )
    before = _snapshot(tmp_path)
    result = _invoke("pretrain", "--config", config, "--device", "cpu")
    _one_sentence(result, f"{out / 'checkpoints' / 'last.pt'} is not a safe checkpoint", "a decompression bomb")
    assert _changed_outside(tmp_path, before, out) == []


def test_encoder_weights_that_are_a_bomb_stop_embed(bomb_pt, tmp_path, peak_memory):
    make_plan(tmp_path / "plans")
    before = _snapshot(tmp_path)
    result = _invoke(
        "embed", "--plans", tmp_path / "plans", "--out", tmp_path / "stores", "--encoder", "tiny-vit",
        "--weights", bomb_pt, "--device", "cpu", "--workers", 0
    )  # fmt: skip
    _one_sentence(result, f"{bomb_pt} is not a safe checkpoint", "a decompression bomb")
    assert _changed_outside(tmp_path, before, tmp_path / "stores") == []


def test_the_zip_directory_is_checked_record_by_record(tmp_path, peak_memory):
    """A stored record declaring more than it stores, a total over the cap, an older non-zip format: one sentence each;
    a real checkpoint still loads."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.arange(10.0)}, good)
    assert torch.equal(load_torch_weights(good, fix="retrain")["w"], torch.arange(10.0))
    with zipfile.ZipFile(good) as archive:
        records = [(r.filename, archive.read(r), 0, r.CRC, r.file_size) for r in archive.infolist()]
    name, data, _, crc, _ = next(r for r in records if "/data/" in r[0])
    lying = [r if r[0] != name else (name, data, 0, crc, 4 * GiB) for r in records]
    with pytest.raises(UnsafeCheckpointError, match=r"declares 4294967296 bytes but stores 40 .* it is damaged"):
        load_torch_weights(_write_zip64(tmp_path / "lying.pt", lying), fix="retrain")
    many = _checkpoint_bomb(tmp_path / "many.pt", size=64 * MiB)  # 64 MiB from 66 kB: over 100-fold as well
    with pytest.raises(UnsafeCheckpointError, match=r"\d+-fold\): a decompression bomb"):
        load_torch_weights(many, fix="retrain")
    legacy = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(1)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(UnsafeCheckpointError, match="legacy.pt is not a safe checkpoint: .*not a zip archive"):
        load_state_dict_file(legacy, fix="re-save it")


def test_a_tissue_model_bomb_is_refused_before_torch_inflates_it(tmp_path, peak_memory):
    module = torch.jit.script(torch.nn.Sigmoid())
    scripted = tmp_path / "tissue.pt"
    torch.jit.save(module, scripted)
    assert load_tissue_model(scripted) is not None  # a real TorchScript model still loads
    with zipfile.ZipFile(scripted) as archive:
        records = [(r.filename, archive.read(r), 0, r.CRC, r.file_size) for r in archive.infolist()]
    size = 2 * GiB
    records.append(("tissue/extra/bomb", _deflated_zeros(size), zipfile.ZIP_DEFLATED, _crc32_of_zeros(size), size))
    bomb = _write_zip64(tmp_path / "bomb.pt", records)
    with pytest.raises(TissueModelError, match="bomb.pt is not a safe checkpoint: record 'tissue/extra/bomb'"):
        load_tissue_model(bomb)


def test_safetensors_headers_that_declare_more_than_the_file_holds_are_refused(tmp_path, peak_memory):
    """safetensors itself requires its tensors to fill the file exactly: a header declaring 4 TB of float32 in a
    100-byte file, and a header length of 2^62, are one sentence each."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [1 << 40], "data_offsets": [0, 4 << 40]}}).encode()
    forged = tmp_path / "forged.safetensors"
    forged.write_bytes(struct.pack("<Q", len(header)) + header + bytes(16))
    with pytest.raises(WeightsFileError, match="forged.safetensors is not a safetensors file"):
        load_state_dict_file(forged, fix="re-export it")
    endless = tmp_path / "endless.safetensors"
    endless.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(WeightsFileError, match="endless.safetensors is not a safetensors file"):
        load_state_dict_file(endless, fix="re-export it")
    (tmp_path / "mixer").mkdir()
    (tmp_path / "mixer" / "mixer.json").write_text(json.dumps({"mixer": asdict(mixer_config("tiny", in_dim=32))}))
    shutil.copy(forged, tmp_path / "mixer" / "mixer.safetensors")
    stores = tmp_path / "stores"
    stores.mkdir()
    write_store(stores / "s0.h5", synthetic_store("s0", seed=0, n_rows=6, n_cols=6))
    before = _snapshot(tmp_path)
    result = _invoke(
        "encode", "--mixer", tmp_path / "mixer" / "mixer.safetensors", "--stores", stores, "--out", tmp_path / "enc",
        "--device", "cpu"
    )  # fmt: skip
    _one_sentence(result, "mixer.safetensors is not a safetensors file")
    assert _changed_outside(tmp_path, before, tmp_path / "enc") == []


def test_an_attribution_file_bomb_stops_export_qupath(tmp_path, peak_memory):
    """An .npz (a zip) in predict's heatmaps folder whose one map inflates to 2 GiB: refused from its directory, against
    what the plan's grid can need."""
    plan_path, _ = make_plan(tmp_path / "plans")
    (plan_path.parent / "tissue_mask.png").write_bytes(imagecodecs.png_encode(np.zeros((60, 70), np.uint8)))
    size = 2 * GiB
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (size // 8,)})
    data = _deflated_zeros(size, header.getvalue())
    crc = _crc32_of_zeros(size, zlib.crc32(header.getvalue()))
    (tmp_path / "heatmaps").mkdir()
    member = ("map_5x.npy", data, zipfile.ZIP_DEFLATED, crc, size + len(header.getvalue()))
    _write_zip64(tmp_path / "heatmaps" / "s1.npz", [member])
    before = _snapshot(tmp_path)
    result = _invoke(
        "export", "qupath", "--plans", tmp_path / "plans", "--out", tmp_path / "qp", "--attributions",
        tmp_path / "heatmaps"
    )  # fmt: skip
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert "s1.npz: the attribution file declares 2,048 MiB, more than the 16 MiB plan s1's maps can take" in said
    assert _changed_outside(tmp_path, before, tmp_path / "qp") == []


# -- pictures read back -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def png_bomb(tmp_path_factory) -> Path:
    return _png_bomb(tmp_path_factory.mktemp("png") / "bomb.png")


def test_the_png_bomb_is_what_it_claims(png_bomb):
    assert png_bomb.stat().st_size < MiB
    with open(png_bomb, "rb") as fh:
        assert struct.unpack(">II", fh.read(24)[16:24]) == (30000, 30000)


def test_a_tissue_mask_bomb_stops_export_qupath_in_one_sentence(png_bomb, tmp_path, peak_memory):
    plan_path, _ = make_plan(tmp_path / "plans")
    shutil.copy(png_bomb, plan_path.parent / "tissue_mask.png")
    before = _snapshot(tmp_path)
    result = _invoke("export", "qupath", "--plans", tmp_path / "plans", "--out", tmp_path / "qp")
    assert result.exit_code != 0 and "Traceback" not in result.output, result.output
    said = " ".join(result.output.split())
    assert "tissue_mask.png: the tissue mask declares 900 Mpx, more than the 268 Mpx mixmag decodes" in said
    assert _changed_outside(tmp_path, before, tmp_path / "qp") == []


def test_a_qc_picture_bomb_is_left_out_of_the_report_with_a_warning(png_bomb, trained_run, tmp_path, peak_memory):
    """The report finds QC pictures through each store's plan_path; a bomb there is left out and said, the report is
    written, and nothing but the report changes."""
    work = tmp_path / "w"
    shutil.copytree(trained_run, work)
    plan_path, _ = make_plan(tmp_path / "plans")
    shutil.copy(png_bomb, plan_path.parent / "qc_regions.png")
    for store in (work / "stores").glob("*.h5"):
        with h5py.File(store, "r+") as f:
            f.attrs["plan_path"] = str(plan_path)
    config = json.loads((work / "run" / "config.json").read_text())
    config["stores"], config["cohort"] = str(work / "stores"), str(work / "cohort.csv")
    (work / "run" / "config.json").write_text(json.dumps(config))
    before = _snapshot(tmp_path)
    result = _invoke("report", work / "run")
    assert result.exit_code == 0, result.output
    assert "qc_regions.png: the QC picture declares 900 Mpx, more than" in " ".join(result.output.split())
    assert _changed_outside(tmp_path, before) == [work / "run" / "report.html"]


def test_read_picture_decodes_only_what_fits(tmp_path, png_bomb, peak_memory):
    small = tmp_path / "small.png"
    small.write_bytes(imagecodecs.png_encode(np.full((5, 7, 3), 9, np.uint8)))
    assert read_picture(small, what="picture").shape == (5, 7, 3)
    assert read_picture(small, what="picture", mode="L").shape == (5, 7)
    with pytest.raises(PictureError, match=r"declares 7 x 5 px \(0 Mpx\), more than"):
        read_picture(small, what="picture", max_pixels=34)
    with pytest.raises(PictureError, match="bomb.png: the picture declares 900 Mpx"):
        read_picture(png_bomb, what="picture")
    (tmp_path / "not.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(PictureError, match="not.png: the picture cannot be read as a picture"):
        read_picture(tmp_path / "not.png", what="picture")


# -- slides -----------------------------------------------------------------------------------------------------------

SLIDE_BOMBS = {
    "jpeg tile": (_jpeg_tile_bomb, "does not fit the 256 x 256 px tiles the TIFF declares"),
    "strip": (_strip_bomb, "stored in strips of 20000 x 20000 px (400 Mpx each"),
    "jpeg strip": (_small_strips_bomb, "strip 0's compressed data declares 20000 x 20000 px in a 2048 x 16 px strip"),
    "jpeg 2000 tile": (_jpeg2000_tile_bomb, "tile 0's compressed data declares 20000 x 20000 px in a 256 x 256 px"),
    "500 mm": (lambda p: _huge_slide(p, 10**6, 0.5), "500 x 500 mm: larger than any glass slide"),
    "no mpp": (lambda p: _huge_slide(p, 1_200_000, None), "1200000 x 1200000 px, more than 1000000 px a side"),
}


@pytest.mark.parametrize("bomb", sorted(SLIDE_BOMBS))
def test_a_slide_bomb_is_refused_by_tile_and_doctor_before_decoding(bomb, tmp_path, peak_memory):
    make, said = SLIDE_BOMBS[bomb]
    slide = make(tmp_path / "bomb.tif")
    assert slide.stat().st_size < MiB
    before = _snapshot(tmp_path)
    result = _invoke("tile", slide, "--out", tmp_path / "tiles")
    _one_sentence(result, said, code=1)
    result = _invoke("doctor", slide)
    assert "cannot tile it" in result.output and said in " ".join(result.output.split()), result.output
    assert _changed_outside(tmp_path, before, tmp_path / "tiles") == []


def test_the_physical_bound_names_the_slide_its_size_and_the_fix(tmp_path, peak_memory):
    """A plausible slide at a wrong --mpp: 10^6 px at 0.1 um/px is 100 mm (accepted), at 0.2 um/px it is refused."""
    slide = _huge_slide(tmp_path / "wide.tif", 10**6, None)
    with pytest.raises(SlideTooLargeError) as caught:
        Slide(slide, mpp=0.2)
    assert str(caught.value) == (
        f"{slide}: declares 1000000 x 1000000 px at 0.2 um/px (override), 200 x 200 mm: larger than any glass slide "
        "(at most 100 mm a side; a standard slide is 75 x 25 mm). Fix: check the resolution: pass the slide's true "
        "--mpp (or an 'mpp' column in the cohort table), or re-export the file if its size is wrong."
    )
    with Slide(slide, mpp=0.1) as ok:
        assert (ok.width, ok.height) == (10**6, 10**6)


def test_an_ome_zarr_whose_chunks_declare_a_gigapixel_is_refused_at_open(tmp_path, peak_memory):
    """Zarr decompresses a chunk whole: a level whose .zarray declares 20000 x 20000 px chunks is refused when the
    slide is opened, before any chunk is read."""
    from slide_formats import write_ome_zarr

    folder = write_ome_zarr(np.full((64, 64, 3), 200, np.uint8), 0.5, tmp_path / "s.zarr", n_levels=1, version="0.4")
    meta = next(folder.glob("*/.zarray"))  # the one level
    array = json.loads(meta.read_text())
    array["shape"], array["chunks"] = [3, 20000, 20000], [3, 20000, 20000]
    meta.write_text(json.dumps(array))
    before = _snapshot(tmp_path)
    result = _invoke("tile", folder, "--out", tmp_path / "tiles")
    _one_sentence(result, "stored in chunks of (3, 20000, 20000) (1,200 M values each", code=1)
    assert _changed_outside(tmp_path, before, tmp_path / "tiles") == []
