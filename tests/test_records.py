"""Typed records between stages (issue 23): a store's attributes as one `StoreHeader`, written as the flat HDF5
attributes they always were; older stores load, malformed ones are one sentence."""

import json
import math

import h5py
import pytest
from test_store import make_store

from mixmag.catalog import load_catalog
from mixmag.errors import RunError
from mixmag.models.slide import SlideModel
from mixmag.runs import (
    RUN_FORMAT_VERSION,
    PredictionRow,
    PretrainRun,
    TrainRun,
    read_losses,
    read_mixer_meta,
)
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
from mixmag.train.classifier import SlideClassifier


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


# -- run records (runs.py): pipeline.json, prediction rows, mixer.json, the pretraining log, metrics.json ------------
def _rows() -> list[PredictionRow]:
    return [
        PredictionRow("p1", 1, 0.8, ("a", "b"), (0.7, 0.8)),
        PredictionRow("p2", 0, 0.25, ("c",), (0.25,)),
    ]


def _write_run(folder, pipeline: dict) -> TrainRun:
    run = TrainRun(folder)
    split = {"auroc": 1.0, "ci95": [1.0, 1.0], "specimens": 2, "positive": 1}
    run.write_results(
        config={"cohort": "c.csv", "stores": "s", "bags": "20x"},
        splits={"train": [], "tune": ["p1", "p2"], "test": ["p1", "p2"]},
        pipeline=pipeline,
        predictions={"tune": _rows(), "test": _rows()},
        metrics={"best_epoch": 3, "tune": split, "test": split},
    )
    return run


def test_prediction_rows_are_written_as_before_and_read_back_typed(tmp_path):
    run = _write_run(tmp_path, {})
    lines = run.predictions("test").read_text().splitlines()
    assert lines == [
        "specimen,label,score,slides,slide_scores",
        "p1,1,0.800000,a;b,0.700000;0.800000",
        "p2,0,0.250000,c,0.250000",
    ]
    back = run.read_prediction_rows("test")
    assert back == _rows() and back[0].slide_pairs() == [("a", 0.7), ("b", 0.8)]
    assert run.read_scores("test") == {"p1": (1, 0.8), "p2": (0, 0.25)}
    assert run.read_metrics_record().test.value("auroc") == 1.0 and run.read_metrics_record().best_epoch == 3


def test_pipeline_json_is_a_typed_record_and_older_runs_still_load(tmp_path):
    settings = PipelineSettings(encoder="stats", region_size=3, level_mpps=[2.0, 1.0])
    run = _write_run(tmp_path / "new", settings.model_dump() | {"bag_dim": 8, "mixer": None, "mixer_digest": None})
    record = run.read_pipeline_record()
    assert record.run_format == RUN_FORMAT_VERSION and record.bag_dim == 8 and record.settings == settings
    old = _write_run(tmp_path / "old", {"encoder": "stats"})  # a run from before most fields were recorded
    assert old.read_pipeline_record().bag_dim is None and old.read_pipeline_record().space.encoder == "stats"
    bad = _write_run(tmp_path / "bad", {"bag_dim": "eight"})
    with pytest.raises(RunError, match=r"pipeline\.json: damaged or not this kind of file \(`bag_dim` is 'eight'"):
        bad.read_pipeline()


def test_a_classifier_reads_its_pipeline_through_the_record():
    classifier = SlideClassifier(SlideModel(8), "20x", {"encoder": "stats", "encoder_weights_digest": "abc"})
    assert classifier.record.encoder_weights_digest == "abc"
    classifier.pipeline["encoder_weights_digest"] = "other"  # the file as read may be amended; the record follows
    assert classifier.record.encoder_weights_digest == "other"


def test_mixer_json_is_a_typed_record(tmp_path):
    meta = tmp_path / "mixer.json"
    meta.write_text(json.dumps({"mixer": {"dim": 8}, "stores": {"encoder": "stats", "tile_px": None}}))
    record = read_mixer_meta(meta)
    assert record.preset == "custom" and record.space.encoder == "stats"
    assert record.space.model_fields_set == {"encoder"}  # a null field is not checked against the stores
    assert record.space.differences(EmbeddingSpace(encoder="stats", tile_px=224)) == []
    assert record.space.differences(EmbeddingSpace(encoder="uni")) == ["encoder"]
    meta.write_text("[1, 2]")
    with pytest.raises(ValueError):
        read_mixer_meta(meta)


def test_the_pretraining_log_is_read_as_typed_losses(tmp_path):
    run = PretrainRun(tmp_path)
    run.log.write_text("step,mem,baseline_loss,lr\n10,-0.5,-0.25,0.1\n20,-0.6,,0.1\n")
    losses = run.read_losses()
    assert [r.step for r in losses] == [10, 20] and losses[0].mem == -0.5 and math.isnan(losses[1].baseline_loss)
    assert run.last_step() == 20 and run.log_rows_up_to(10) == [
        {"step": "10", "mem": "-0.5", "baseline_loss": "-0.25", "lr": "0.1"}
    ]
    run.log.write_text("step,mem\n10,-0.2\n")
    assert read_losses(run.log)[0].baseline_loss is None  # no such column: not a NaN
