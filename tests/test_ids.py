"""Ids that become file names: one rule, and the path stays in its folder."""

from __future__ import annotations

import pytest

from mixmag.ids import UnsafeIdError, check_id, path_for_id


@pytest.mark.parametrize("good", ["S1", "TCGA-AB-1234.01", "a_b+c", "0"])
def test_plain_ids_pass(good):
    assert check_id(good) == good


@pytest.mark.parametrize(
    "bad", ["", "../x", "/abs/ABS10", "a/b", "..", ".hidden", "a..b", "x\x00", "a b", "é", 5, None, "x" * 201, "-rf"]
)
def test_hostile_ids_are_refused_with_the_source_named(bad):
    with pytest.raises(UnsafeIdError, match="cohort.csv row 3"):
        check_id(bad, where="cohort.csv row 3")


def test_symlinked_name_pointing_out_is_refused(tmp_path):
    inside = tmp_path / "stores"
    inside.mkdir()
    (inside / "S1.h5").symlink_to(tmp_path / "elsewhere.h5")
    with pytest.raises(UnsafeIdError, match="outside"):
        path_for_id(inside, "S1", ".h5")
    assert path_for_id(inside, "S2", ".h5") == inside / "S2.h5"
