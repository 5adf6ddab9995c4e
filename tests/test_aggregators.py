"""Slide aggregators: one registry (AB-MIL, mean pooling), the contract every aggregator keeps (padding, order,
contributions), and training, loading and predicting with a non-default one at a level and after a mixer."""

from __future__ import annotations

import csv
import json
import typing
from pathlib import Path

import pytest
import torch
from train_runs import train_config

from mixmag.models import slide as slide_module
from mixmag.models.aggregators import AGGREGATORS, AggregatorName, build_aggregator
from mixmag.models.meanpool import MeanPool
from mixmag.models.slide import SlideModel
from mixmag.runs import TrainRun
from mixmag.stages import predict as prediction
from mixmag.train.classifier import SlideClassifier
from mixmag.train.finetune import run_training

NAMES = list(AGGREGATORS)


def test_the_config_names_are_the_registry():
    assert list(typing.get_args(AggregatorName)) == NAMES and {"abmil", "mean"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("outputs", [1, 3])
def test_every_aggregator_ignores_padding_and_order_and_its_shares_sum_to_the_logit(name, outputs):
    torch.manual_seed(0)
    model = build_aggregator(name, 8, 16, outputs).eval()
    bags = [torch.randn(n, 8) for n in (5, 2, 9)]
    padded = torch.full((3, 9, 8), float("nan"))  # whatever the padding holds must not matter
    mask = torch.zeros(3, 9, dtype=torch.bool)
    for i, b in enumerate(bags):
        padded[i, : len(b)] = b
        mask[i, : len(b)] = True
    logits, weights, shares = model.contributions(padded, mask)
    assert logits.shape == ((3,) if outputs == 1 else (3, outputs)) and torch.isfinite(logits).all()
    for i, b in enumerate(bags):
        alone = model(b[None])[0]
        torch.testing.assert_close(logits[i], alone[0])
        perm = torch.randperm(len(b))
        torch.testing.assert_close(model(b[perm][None])[0], alone, rtol=1e-5, atol=1e-6)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(1), torch.ones(3))
    torch.testing.assert_close(shares.sum(1), logits - model.classifier.bias, rtol=0, atol=1e-5)


def test_mean_pooling_is_the_classifier_of_the_mean_instance():
    torch.manual_seed(1)
    model = MeanPool(6, n_outputs=2)
    bag = torch.randn(1, 11, 6)
    torch.testing.assert_close(model(bag)[0], model.classifier(bag.mean(1)))
    assert torch.equal(model(bag)[1], torch.full((1, 11), 1 / 11))
    half = bag.half()  # stored float16 bags are widened block by block, never copied
    torch.testing.assert_close(model(half)[0], model.classifier(half.float().mean(1)))


@pytest.mark.parametrize("name", NAMES)
def test_large_bags_projected_one_by_one_give_the_padded_logits(name, monkeypatch):
    torch.manual_seed(2)
    model = SlideModel(8, 4, aggregator=name).eval()
    bags = [torch.randn(n, 8) for n in (7, 3)]
    padded = model.bag_logits(bags)
    monkeypatch.setattr(slide_module, "PAD_UP_TO_BYTES", 0)
    torch.testing.assert_close(model.bag_logits(bags), padded)


def test_an_unknown_aggregator_is_one_sentence():
    with pytest.raises(Exception, match="unknown aggregator 'transformer'; use one of abmil, mean"):
        build_aggregator("transformer", 8, 4, 1)
    with pytest.raises(ValueError, match="aggregator"):
        train_config(Path("."), Path("o"), aggregator="transformer")


@pytest.mark.parametrize("where", ["20x", "regions"])
def test_a_mean_pooling_run_is_recorded_and_loads_as_itself(small_cohort, tmp_path, where):
    mixer = {"mixer": {"init": "random", "preset": "tiny"}, "epochs": 1} if where == "regions" else {}
    config = train_config(small_cohort, tmp_path / "run", bags=where, aggregator="mean", **mixer)
    run_training(config)
    assert TrainRun(tmp_path / "run").read_config()["aggregator"] == "mean"
    model = SlideClassifier.load(tmp_path / "run")
    assert isinstance(model.model.aggregator, MeanPool)
    stores = {p.stem: p for p in sorted((small_cohort / "stores").glob("*.h5"))}
    model.use_stores(stores)
    with open(tmp_path / "run" / "predictions_test.csv", newline="") as f:
        written = {r["slides"]: r for r in csv.DictReader(f)}
    one_slide = next(r for r in written.values() if ";" not in r["slides"])
    assert model.score([one_slide["slides"]])[one_slide["slides"]] == pytest.approx(float(one_slide["score"]), abs=1e-6)
    attribution = model.explain(one_slide["slides"])  # auto: mean pooling has no attention, so gradient x input
    assert attribution.method == "gradient x input"
    with pytest.raises(Exception, match="weighs every instance alike"):
        model.explain(one_slide["slides"], "attention")


def test_predict_with_a_mean_pooling_run(small_cohort, tmp_path):
    run_training(train_config(small_cohort, tmp_path / "run", aggregator="mean"))
    slides = ["P000-S0", "P001-S0"]
    inputs = prediction.read_inputs(slides, None, small_cohort / "stores")
    result = prediction.run(tmp_path / "run", inputs, tmp_path / "p.csv", tmp_path / "work", heatmaps=False)
    assert [o.slide_id for o in result.outcomes] == slides and all(o.score is not None for o in result.outcomes)
    assert all(abs(sum(o.level_share.values()) - 1) < 1e-6 for o in result.outcomes)


def test_runs_saved_before_the_registry_still_load(small_cohort, tmp_path):
    run_training(train_config(small_cohort, tmp_path / "run"))
    folder = TrainRun(tmp_path / "run")
    stores = {p.stem: p for p in sorted((small_cohort / "stores").glob("*.h5"))}
    now = SlideClassifier.load(folder.folder)
    now.use_stores(stores)
    expected = now.score(["P000-S0"])
    old = {k.replace("aggregator.", "abmil.", 1): v for k, v in folder.read_weights().items()}
    torch.save(old, folder.weights)  # as runs before the registry wrote best.pt and config.json
    config = folder.read_config()
    del config["aggregator"]
    folder.config.write_text(json.dumps(config))
    before = SlideClassifier.load(folder.folder)
    before.use_stores(stores)
    assert before.score(["P000-S0"]) == expected and before.model.aggregator.attends
