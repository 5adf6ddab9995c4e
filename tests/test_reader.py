import numpy as np
import pytest

from mixmag.errors import ResolutionError, SlideNotFoundError, SlideUnreadableError
from mixmag.geometry import Box
from mixmag.slides.reader import Slide, choose_level, plan_read, preferred_backends, resize_area
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide


def test_choose_level_is_coarsest_fine_enough():
    mpps = [0.25, 1.0, 4.0]
    assert choose_level(mpps, 0.5) == 0
    assert choose_level(mpps, 1.0) == 1
    assert choose_level(mpps, 2.0) == 1
    assert choose_level(mpps, 8.0) == 2
    assert choose_level(mpps, 1.04) == 1
    assert choose_level([0.6], 0.5) is None
    assert choose_level([0.52], 0.5) == 0  # within the 5% tolerance


def test_plan_read_rounds_once_at_the_chosen_level():
    box = Box(1000.4, 2000.6, 1000.4 + 1792.0, 2000.6 + 1792.0)
    plan = plan_read([1.0, 4.0, 16.0], 0.25, box, 1.0, (448, 448))
    assert plan.level == 1
    assert (plan.x, plan.y, plan.width, plan.height) == (250, 500, 448, 448)
    assert abs(plan.x - box.x0 / 4) <= 0.5 and abs(plan.y - box.y0 / 4) <= 0.5
    assert (plan.out_width, plan.out_height) == (448, 448)


def test_finer_than_level_zero_is_an_error_unless_allowed():
    box = Box(0, 0, 1000, 1000)
    with pytest.raises(ResolutionError, match="--allow-upsample"):
        plan_read([1.0], 0.6, box, 0.5, slide_name="thin.svs")
    plan = plan_read([1.0], 0.6, box, 0.5, allow_upsample=True)
    assert plan.level == 0 and plan.out_width == 1200


def test_resize_area_is_exact_for_halving():
    a = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    expected = np.floor(a.reshape(32, 2, 32, 2, 3).astype(float).mean((1, 3)) + 0.5)
    assert np.array_equal(resize_area(a, 32, 32), expected)


def test_real_slides_open_with_both_backends(real_svs, real_pyramid):
    for path, n_levels in [(real_svs, 1), (real_pyramid, 3)]:
        seen = {}
        for backend in ("tiffslide", "openslide"):
            with Slide(path, backend=backend) as slide:
                assert slide.mpp == pytest.approx(0.499)
                assert (slide.width, slide.height) == (2220, 2967)
                assert len(slide.level_dimensions) == n_levels
                seen[backend] = slide.read_box(Box(300, 400, 1200, 1300), 1.0)
        assert seen["tiffslide"].shape == (449, 449, 3)  # 900 px * 0.499 / 1.0
        assert np.abs(seen["tiffslide"].astype(int) - seen["openslide"]).mean() < 1.0
        assert Slide(path).backend == "tiffslide"  # JPEG-tiled TIFF: the faster reader


def test_coarser_than_any_level_is_downsampled(real_svs):
    with Slide(real_svs) as slide:
        tile = slide.read_box(Box(0, 0, 448 / 0.499, 448 / 0.499), 2.0, (224, 224))
        assert tile.shape == (224, 224, 3) and tile.dtype == np.uint8
        assert tile.std() > 5  # real tissue, not a blank


def test_direct_tile_reads_equal_tiffslide(real_svs, real_pyramid, tissue_slide):
    for path in (real_svs, real_pyramid, tissue_slide):
        with Slide(path) as slide:
            handle = slide._handle.raw
            for level, reader in enumerate(slide._direct):
                assert reader is not None
                w, h = slide.level_dimensions[level]
                for x, y, rw, rh in [(0, 0, 97, 61), (w - 130, h - 111, 130, 111), (w // 3, h // 4, w // 3, h // 3)]:
                    ds = slide.level_downsamples[level]
                    loc = (int(np.ceil(x * ds)), int(np.ceil(y * ds)))
                    ref = handle.read_region(loc, level, (rw, rh), as_array=True)
                    assert np.array_equal(reader.read(x, y, rw, rh), ref)


def test_reads_outside_the_slide_are_white_glass(tissue_slide):
    with Slide(tissue_slide) as slide:
        out = slide._read_raw(0, slide.width - 10, slide.height - 10, 30, 30)
        assert out.shape == (30, 30, 3)
        assert (out[15:, :] == 255).all() and (out[:, 15:] == 255).all()
        assert not (out[:10, :10] == 255).all()


@pytest.mark.parametrize("mpp", [0.25, 0.5, 0.2631])
def test_generated_pyramids_read_at_every_level(slide_dir, mpp):
    image = tissue_like(2400, 2000, mpp, seed=1, tissue_mask=np.ones((4, 4), bool))
    path = write_slide(slide_dir / f"pyr-{mpp}.tiff", image, mpp, downsamples=(1, 2, 4), compression="deflate")
    with Slide(path) as slide:
        assert slide.level_mpps == pytest.approx((mpp, 2 * mpp, 4 * mpp))
        box = Box(100, 100, 100 + 448 / mpp, 100 + 448 / mpp)
        for target in (0.5, 1.0, 2.0):
            out = slide.read_box(box, target)
            assert out.shape[0] == round(448 / target)
        auto = slide.read_box(box, 2.0, (224, 224))  # from the coarsest fine-enough level
        assert slide.plan(box, 2.0).level == 2
        from_level0 = slide.read(plan_read([1.0], mpp, box, 2.0, (224, 224)))
        assert np.abs(auto.astype(int) - from_level0).mean() < 1.0


def test_plain_ome_tiff_that_openslide_refuses(slide_dir):
    image = tissue_like(1500, 1200, 0.5, seed=2)
    path = write_slide(slide_dir / "plain.ome.tiff", image, 0.5, flavor="ome-strips", compression="deflate")
    with pytest.raises(SlideUnreadableError):
        Slide(path, backend="openslide")
    with Slide(path) as slide:
        assert slide.backend == "tiffslide"
        assert slide.mpp == 0.5 and "OME" in slide.mpp_source
        assert slide._direct == [None]  # strips: read through TiffSlide itself
        out = slide.read_box(Box(0, 0, 448, 448), 1.0)
        assert out.shape == (224, 224, 3)
        assert np.abs(out.astype(int) - resize_area(image[:448, :448], 224, 224)).max() <= 1


def test_missing_and_corrupt_files_have_clear_errors(tmp_path, tissue_slide):
    with pytest.raises(SlideNotFoundError, match="nothere.svs: file not found"):
        Slide(tmp_path / "nothere.svs")
    bad = tmp_path / "corrupt.svs"
    bad.write_bytes(b"II*\x00" + b"\x00" * 100)
    with pytest.raises(SlideUnreadableError) as info:
        Slide(bad)
    assert "corrupt.svs" in str(info.value) and "Fix:" in str(info.value)
    truncated = tmp_path / "truncated.tiff"
    truncated.write_bytes(tissue_slide.read_bytes()[:5000])
    with pytest.raises(SlideUnreadableError, match="truncated.tiff"):
        Slide(truncated)


def test_backend_preference_by_format(tmp_path, tissue_slide):
    assert preferred_backends(tissue_slide)[0] == "tiffslide"
    mrxs = tmp_path / "x.mrxs"
    mrxs.write_bytes(b"")
    assert preferred_backends(mrxs)[0] == "openslide"


def test_integer_reductions_snap_to_the_block_lattice():
    box = Box(1001.0, 2003.0, 1001.0 + 1792.0, 2003.0 + 1792.0)
    plan = plan_read([1.0, 4.0, 16.0], 0.25, box, 0.5, (896, 896))
    assert (plan.level, plan.width, plan.out_width) == (0, 1792, 896)
    assert plan.x % 2 == 0 and plan.y % 2 == 0
    assert abs(plan.x - box.x0) <= 1 and abs(plan.y - box.y0) <= 1  # within half an output pixel


def test_fused_reduction_equals_read_then_resize(slide_dir):
    image = tissue_like(2600, 2300, 0.25, seed=4, tissue_mask=np.ones((4, 4), bool))
    path = write_slide(slide_dir / "fused.svs", image, 0.25, downsamples=(1,), flavor="aperio", tile=240)
    with Slide(path) as slide:
        for box, target in [
            (Box(13.2, 57.9, 13.2 + 1792, 57.9 + 1792), 0.5),
            (Box(500, 300, 500 + 896, 300 + 896), 1.0),
        ]:
            plan = slide.plan(box, target)
            assert plan.width // plan.out_width in (2, 4)
            fused = slide.read(plan)
            unfused = resize_area(
                slide._read_raw(plan.level, plan.x, plan.y, plan.width, plan.height), plan.out_width, plan.out_height
            )
            assert np.array_equal(fused, unfused)


def test_jpeg2000_tiffs_prefer_openslide(tmp_path):
    image = tissue_like(512, 512, 0.5, seed=0)
    import tifffile

    path = tmp_path / "j2k.tiff"
    tifffile.imwrite(path, image, tile=(256, 256), compression="jpeg2000", photometric="rgb")
    assert preferred_backends(path)[0] == "openslide"


@pytest.mark.parametrize("fmt", ["tiffslide", "openslide", "omezarr", "czi", "dicom", "slideio"])
def test_every_backend_reads_the_same_pixels_at_exact_mpp(slide_dir, fmt):
    """The reader's guarantees through each backend: exact mpp, level-0 coordinates, white glass outside the
    slide, and the same read as TiffSlide's of the same pixels (equal where the format is lossless)."""
    from slide_formats import need, slide_pixels, write_czi, write_dicom, write_ome_zarr

    mpp = 0.25
    image = tissue_like(1600, 1200, mpp, seed=6, tissue_mask=np.ones((4, 4), bool))
    tiff = slide_dir / "backends.svs"
    if not tiff.exists():
        write_slide(tiff, image, mpp, downsamples=(1, 2, 4), compression="deflate", flavor="aperio")
    path = {
        "omezarr": lambda: write_ome_zarr(slide_pixels(tiff), mpp, slide_dir / "backends.ome.zarr"),
        "czi": lambda: write_czi(slide_pixels(tiff), mpp, slide_dir / "backends.czi"),
        "dicom": lambda: write_dicom(tiff, slide_dir / "backends-dicom"),
    }.get(fmt, lambda: tiff)()
    if fmt == "slideio":
        need("slideio")
    box = Box(101.3, 57.8, 101.3 + 896, 57.8 + 896)
    with (
        Slide(tiff, backend="tiffslide") as ref,
        Slide(path, backend=fmt if fmt in ("tiffslide", "openslide", "slideio") else "auto") as slide,
    ):
        assert slide.mpp == pytest.approx(mpp) and (slide.width, slide.height) == (1600, 1200)
        assert slide.level_mpps[0] == pytest.approx(mpp)
        for target in (0.25, 0.5, 1.0):
            ours, theirs = slide.read_box(box, target), ref.read_box(box, target)
            assert ours.shape == theirs.shape == (round(896 * mpp / target),) * 2 + (3,)
            if fmt != "czi":  # CZI: level 0 only (see docs/formats-readers.md)
                assert slide.plan(box, target) == ref.plan(box, target)  # same level, same level-0 box
            diff = np.abs(ours.astype(int) - theirs).mean()
            if fmt == "dicom":
                assert diff < 2.5, (fmt, target)  # JPEG q95 re-encoding of a fine synthetic texture
            elif target == mpp:
                assert diff == 0, (fmt, target)  # lossless level 0: the same pixels
            else:
                assert diff < 1.0, (fmt, target)  # levels made by each writer's own 2x mean (rounding differs)
        corner = slide._read_raw(0, slide.width - 10, slide.height - 10, 30, 30)
        assert (corner[15:] == 255).all() and (corner[:, 15:] == 255).all()
