"""The real sample slides ship with the project, unaltered (tests/data/PROVENANCE.md)."""

from __future__ import annotations

import hashlib

import pytest

EXPECTED = {
    "CMU-1-Small-Region.svs": "ed92d5a9f2e86df67640d6f92ce3e231419ce127131697fbbce42ad5e002c8a7",
    "CMU-1-Small-Region.pyramid.tiff": "b6d263cb4e1995e7fb9770ffb40eeb0171c11528e1960cd76260ae8d98fe5580",
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_sample_slide_is_the_documented_file(sample_data, name):
    digest = hashlib.sha256((sample_data / name).read_bytes()).hexdigest()
    assert digest == EXPECTED[name], f"{name} differs from the file PROVENANCE.md describes"


def test_provenance_credits_the_source(sample_data):
    text = (sample_data / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "CC0" in text and "Carnegie Mellon" in text and "OpenSlide" in text
