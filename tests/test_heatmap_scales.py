"""Heatmap colours that match the numbers beside them (issue 30): uniform attention is the neutral colour,
near-uniform attention stays pale, a one-region slide is one neutral square with a finite colour bar, and every
magnification's share is shown next to its share of the tokens."""

from __future__ import annotations

import warnings

import matplotlib
import numpy as np
import pytest
import torch
from test_predict import _attention_on_nuclei, _invoke

from mixmag.eval.explain import SlideAttribution, explain_slide
from mixmag.models.slide import SlideModel
from mixmag.report.heatmaps import (
    DIVERGING_CMAP,
    draw_heatmaps,
    level_title,
    map_panels,
    ratio_scale,
    signed_scale,
    value_label,
)
from mixmag.store import read_attrs
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide
from mixmag.train.classifier import SlideClassifier

NEUTRAL = np.asarray(matplotlib.colormaps[DIVERGING_CMAP](0.5))


def _distance(rgba: np.ndarray) -> np.ndarray:
    return np.abs(np.asarray(rgba)[..., :3] - NEUTRAL[:3]).max(axis=-1)


def test_uniform_attention_is_the_neutral_colour_and_near_uniform_stays_pale():
    n = 200
    uniform = np.full(n, 1 / n)
    assert _distance(ratio_scale(uniform, "x").colours(uniform)).max() < 1e-6
    near = np.linspace(0.97, 1.03, n) / n  # the 0.97-1.03x that the old min-max scale stretched into hot spots
    scale = ratio_scale(near, "x")
    assert scale.limit >= 1 and _distance(scale.colours(near)).max() < 0.06
    hot = np.r_[np.full(n - 1, 1.0), 8.0]
    scale = ratio_scale(hot, "x")
    assert _distance(scale.colours(hot))[-1] > 0.5  # a real hot spot is still far from white
    assert scale.colours(hot)[-1][0] > scale.colours(hot)[-1][2]  # and on the warm side


def test_ratio_ticks_read_as_times_uniform_and_signed_scales_centre_on_zero():
    positions, labels = ratio_scale(np.array([1.0, 4.0, 0.25]), "x").ticks()
    assert dict(zip(positions, labels))[0.0] == "1x" and "4x" in labels and "1/4x" in labels
    scale = signed_scale(np.array([-2.0, 0.5, 1.0]), "gradient")
    assert scale.limit == 2.0 and _distance(scale.colours(np.array([0.0])))[0] < 1e-6
    assert signed_scale(np.zeros(3), "g").limit == 1.0  # all zero: a finite scale, not 0..1e-12


def _one_region(method: str = "AB-MIL attention") -> SlideAttribution:
    maps = {name: np.full((3 * 2**i, 3 * 2**i), 1 / 63, np.float32) for i, name in enumerate(("5x", "10x", "20x"))}
    return SlideAttribution(
        slide_id="one",
        score=0.5,
        method=method,
        level_names=["5x", "10x", "20x"],
        level_maps=maps,
        region_size=3,
        regions=np.array([[0, 0]]),
        region_weight=np.array([1.0]),
        token_fraction={"5x": 9 / 189, "10x": 36 / 189, "20x": 144 / 189},
    )


def test_a_one_region_slide_is_one_neutral_square_with_a_finite_scale():
    panels = map_panels(_one_region(), 448.0)
    title, values, _, scale = panels[1]
    assert "1 region" in title and np.isfinite(scale.limit) and scale.limit >= 1
    assert _distance(scale.colours(values[np.isfinite(values)])).max() < 1e-6  # 100% attention on 1 of 1 = uniform
    for _, values, _, scale in panels[2:]:
        assert _distance(scale.colours(values)).max() < 1e-6


def test_a_tile_caption_is_in_the_unit_of_its_colour():
    assert value_label(0.02, ratio_scale(np.full(100, 0.01), "x")) == "2.00x uniform"
    assert value_label(-0.5, signed_scale(np.array([1.0, -0.5]), "g")) == "-0.5"


def test_a_level_share_is_shown_beside_its_token_share():
    a = _one_region()
    a.level_maps["20x"] = a.level_maps["20x"] * 1.01
    title = level_title(a, "20x")
    share, tokens = a.level_share["20x"], a.token_fraction["20x"]
    assert (
        title == f"20x: {100 * share:.0f}% of attention, {100 * tokens:.0f}% of tokens -> {share / tokens:.2f}x uniform"
    )
    a.token_fraction["5x"] = 0.0
    assert level_title(a, "5x") == "5x: not in this model's bags"


@pytest.fixture
def one_region_store(tmp_path):
    """A real slide of exactly 3 x 3 cells (64 px tiles, 128 um cells): one region, tiled and embedded."""
    image = tissue_like(768, 768, 0.5, seed=5, tissue_mask=np.ones((4, 4), bool))
    write_slide(tmp_path / "one.tiff", image, 0.5, downsamples=(1, 4))
    assert _invoke("tile", tmp_path / "one.tiff", "--out", tmp_path / "tiles", "--tile-px", 64).exit_code == 0
    result = _invoke(
        "embed", "--plans", tmp_path / "tiles", "--out", tmp_path / "stores", "--encoder", "stats", "--workers", 0
    )
    assert result.exit_code == 0, result.output
    return tmp_path / "stores" / "one.h5"


def test_the_one_region_slide_draws_without_a_broken_colour_bar(tmp_path, one_region_store):
    attrs = read_attrs(one_region_store)
    model = SlideModel(34).eval()
    _attention_on_nuclei(model)
    classifier = SlideClassifier(model, "all", pipeline=dict(attrs))
    classifier.use_stores({"one": one_region_store})
    with torch.no_grad():
        a = explain_slide(classifier, "one", one_region_store)
    assert len(a.regions) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a singular colour scale warns in matplotlib
        pictures = draw_heatmaps(a, attrs, tmp_path / "maps", top_k=2)
    assert (tmp_path / "maps" / "one_maps.png") in pictures
    _, _, _, scale = map_panels(a, attrs["cell_px"])[1]
    assert scale.limit == 1.0 and _distance(scale.colours(a.region_weight))[0] < 1e-6
