"""Slide aggregators: one registry (AB-MIL, mean pooling), the contract every aggregator keeps (padding, order,
contributions), and training, loading and predicting with a non-default one at a level and after a mixer."""

from __future__ import annotations

import json
import typing
from pathlib import Path

import pytest
import torch
from train_runs import reloaded, train_config

from mixmag.models import slide as slide_module
from mixmag.models.aggregators import AGGREGATORS, AggregatorName, build_aggregator
from mixmag.models.meanpool import MeanPool
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.models.slide import SlideModel
from mixmag.models.transmil import TransMIL
from mixmag.runs import TrainRun
from mixmag.stages import predict as prediction
from mixmag.train.classifier import SlideClassifier
from mixmag.train.finetune import run_training

NAMES = list(AGGREGATORS)


def test_the_config_names_are_the_registry():
    assert list(typing.get_args(AggregatorName)) == NAMES and {"abmil", "mean", "transmil"} <= set(NAMES)


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
        if model.order_invariant:
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


def test_transmil_squares_the_bag_with_copies_of_its_first_instances():
    """Shao et al.: a bag of n is lengthened to the next square by its first instances again; a bag already that long
    is the same sequence, so the same logits."""
    torch.manual_seed(4)
    model = TransMIL(8, n_outputs=2).eval()
    bag = torch.randn(5, 8)  # 5 -> 9: instances 0-3 appended
    torch.testing.assert_close(model(bag[None])[0], model(torch.cat([bag, bag[:4]])[None])[0])
    weights = model(bag[None])[1][0]
    assert weights.shape == (5,) and torch.isclose(weights.sum(), torch.tensor(1.0)) and (weights > 0).all()


@pytest.mark.parametrize("output", ["patch", "cls"])
def test_transmil_after_a_mixer_ignores_padding_regions(output):
    torch.manual_seed(6)
    model = SlideModel(8, 16, RegionMixer(mixer_config("tiny", in_dim=8)), output, aggregator="transmil").eval()
    regions = torch.randn(2, 3, 189, 8)
    mask = torch.tensor([[True, True, True], [True, False, False]])
    regions[1, 1:] = 1e3
    logits, weights = model(regions, mask)
    alone, _ = model(regions[1:, :1], mask[1:, :1])
    torch.testing.assert_close(logits[1], alone[0], rtol=1e-4, atol=1e-5)
    assert weights.shape == ((2, 3 * 189) if output == "patch" else (2, 3))


def test_an_unknown_aggregator_is_one_sentence():
    with pytest.raises(Exception, match="unknown aggregator 'transformer'; use one of abmil, mean"):
        build_aggregator("transformer", 8, 4, 1)
    with pytest.raises(ValueError, match="aggregator"):
        train_config(Path("."), Path("o"), aggregator="transformer")


@pytest.mark.parametrize(
    "name, kind, where",
    [("mean", MeanPool, "20x"), ("mean", MeanPool, "regions"), ("transmil", TransMIL, "20x")],  # TransMIL (512-d)
)  # after a mixer costs minutes of CPU to train: its forward there is tested below
def test_a_run_with_another_aggregator_is_recorded_and_loads_as_itself(small_cohort, tmp_path, where, name, kind):
    mixer = {"mixer": {"init": "random", "preset": "tiny"}} if where == "regions" else {}
    one_epoch = {"epochs": 1} if mixer or name == "transmil" else {}
    config = train_config(small_cohort, tmp_path / "run", bags=where, aggregator=name, **mixer, **one_epoch)
    run_training(config)
    assert TrainRun(tmp_path / "run").read_config()["aggregator"] == name
    model, one_slide = reloaded(tmp_path / "run", small_cohort / "stores")
    assert isinstance(model.model.aggregator, kind)
    assert model.score([one_slide["slides"]])[one_slide["slides"]] == pytest.approx(float(one_slide["score"]), abs=1e-6)
    attribution = model.explain(one_slide["slides"])  # auto: no attention to draw, so gradient x input
    assert attribution.method == "gradient x input"
    with pytest.raises(Exception, match="weighs every instance alike"):
        model.explain(one_slide["slides"], "attention")


def test_predict_with_a_mean_pooling_run(small_cohort, tmp_path):
    run_training(train_config(small_cohort, tmp_path / "run", aggregator="mean"))
    slides = ["P000-S0", "P001-S0"]
    inputs = prediction.read_inputs(slides, None, small_cohort / "stores")
    said: list[str] = []
    result = prediction.run(
        tmp_path / "run", inputs, tmp_path / "p.csv", tmp_path / "work", heatmaps=False, on_run=said.append
    )
    assert said[0].endswith("; aggregator mean")
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
