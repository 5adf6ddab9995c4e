"""Typed records between stages (issue 23): a store's attributes as one `StoreHeader`, written as the flat HDF5
attributes they always were; older stores load, malformed ones are one sentence."""

import h5py
import pytest
from test_store import make_store

from mixmag.catalog import load_catalog
from mixmag.store import (
    EmbeddingSpace,
    PipelineSettings,
    StoreError,
    StoreHeader,
    read_attrs,
    read_header,
    read_index,
    read_store,
    shared_settings,
    write_store,
)


def test_the_header_is_written_as_the_flat_attributes_it_was_given(tmp_path):
    store = make_store()
    store.attrs["peer_note"] = "kept"  # an attribute this mixmag does not know survives the round trip
    path = write_store(tmp_path / "s1.h5", store)
    with h5py.File(path, "r") as f:
        written = set(f.attrs)
    assert written == set(store.attrs) | {"format_version", "mixmag_version", "level_names"}  # nothing added
    header = read_header(path)
    assert (
        header.slide_id == "s1" and header.level_mpps == [2.0, 1.0, 0.5] and header.level_names == ["5x", "10x", "20x"]
    )
    assert header.to_attrs() == read_attrs(path)
    assert read_store(path).header == header == read_index(path).header


def test_the_header_nests_settings_and_space(tmp_path):
    header = StoreHeader.from_attrs(make_store().attrs | {"region_size": 3, "read_mode": "derive"})
    settings = header.settings
    assert type(settings) is PipelineSettings and settings.read_mode == "derive" and settings.region_size == 3
    assert type(settings.space) is EmbeddingSpace and settings.space.encoder == "stats"
    assert set(EmbeddingSpace.model_fields) < set(PipelineSettings.model_fields) < set(StoreHeader.model_fields)
    other = settings.model_copy(update={"read_mode": "pyramid"})
    assert settings.space == other.space and settings.key() != other.key()


def test_an_older_store_without_the_newer_attributes_still_loads(tmp_path):
    path = write_store(tmp_path / "old.h5", make_store())
    with h5py.File(path, "a") as f:
        for key in ("format_version", "mixmag_version"):  # and no region, context, tiling or tissue attributes
            del f.attrs[key]
    header = read_header(path)
    assert header.format_version is None and header.region_size is None and header.tissue_model is None
    assert read_store(path).level_names == ["5x", "10x", "20x"]
    assert shared_settings([path]).encoder == "stats"


def test_an_attribute_of_the_wrong_type_is_one_sentence_naming_the_file(tmp_path):
    path = write_store(tmp_path / "s1.h5", make_store())
    with h5py.File(path, "a") as f:
        f.attrs["region_size"] = "three"
    for read in (read_store, read_index, read_header):
        with pytest.raises(StoreError, match=r"s1\.h5: invalid store: attribute region_size is 'three'"):
            read(path)
    store = make_store()
    store.attrs["embedding_dim"] = "eight"
    with pytest.raises(StoreError, match="refusing to write an invalid store: attribute embedding_dim is 'eight'"):
        write_store(tmp_path / "bad.h5", store)
    assert not (tmp_path / "bad.h5").exists()


def test_a_malformed_attribute_keeps_todays_sentence(tmp_path):
    """The checks that name a malformed level list, grid or slide id speak first; the types come after them."""
    path = write_store(tmp_path / "s1.h5", make_store())
    with h5py.File(path, "a") as f:
        f.attrs["grid_shape"] = "[1, 2, 3]"
    with pytest.raises(StoreError, match=r"attribute grid_shape \[1, 2, 3\] is not \[rows, cols\]") as info:
        read_store(path)
    assert "valid" not in str(info.value).split("grid_shape", 1)[1]  # no second, type-checker sentence


def test_the_catalog_keys_settings_as_the_header_does(tmp_path):
    write_store(tmp_path / "a.h5", make_store())
    write_store(tmp_path / "b.h5", make_store(seed=1))
    catalog = load_catalog(tmp_path)
    assert {e.settings for e in catalog.entries} == {read_header(tmp_path / "a.h5").settings.key()}
    assert catalog.shared_settings() == shared_settings(catalog.paths())
