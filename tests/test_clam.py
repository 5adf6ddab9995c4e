"""CLAM-SB (`aggregator: clam`): its instance loss against a slow hand computation (binary and multiclass, k clamped
to small bags), learning a tiny synthetic task, and runs of every task type that save, reload and score alike."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from train_runs import reloaded, train_config

from mixmag.metrics import auroc
from mixmag.models.clam import BAG_WEIGHT, CLAMSB, SVM_MARGIN, TOP_K
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.models.slide import SlideModel
from mixmag.runs import TrainRun
from mixmag.stages import predict as prediction
from mixmag.synth.benchmark import OutcomeSpec, write_outcome_cohort
from mixmag.train.classifier import ATTENTION, SlideClassifier
from mixmag.train.finetune import run_training


def _svm(scores: list[float], target: int) -> float:
    """The smooth top-1 SVM (margin 1, temperature 1) of one score vector, written out."""
    margins = [SVM_MARGIN if j != target else 0.0 for j in range(len(scores))]
    return math.log(sum(math.exp(m + s - scores[target]) for m, s in zip(margins, scores, strict=True)))


def _slow_instance_loss(model: CLAMSB, bag: torch.Tensor, label: int) -> float | None:
    """One bag's instance term, one instance at a time: the k = min(8, n // 2) most attended instances positive and
    the k least negative in the label's classifier; with several outputs, the most attended negative in the others."""
    with torch.no_grad():
        h = [F.relu(model.fc(z)) for z in bag]
        scores = [float(model.h(torch.tanh(model.V(x)) * torch.sigmoid(model.U(x)))) for x in h]
        logits = [model.instance(x).reshape(model.n_classes, 2).tolist() for x in h]
    k = min(TOP_K, len(bag) // 2)
    order = sorted(range(len(bag)), key=lambda i: -scores[i])
    top, bottom = order[:k], order[len(order) - k :]
    losses = [_svm(logits[i][label], 1) for i in top] + [_svm(logits[i][label], 0) for i in bottom]
    if model.classifier.out_features > 1:
        losses += [_svm(logits[i][c], 0) for i in top for c in range(model.n_classes) if c != label]
    return sum(losses) / len(losses) if losses else None


@pytest.mark.parametrize("outputs, labels", [(1, [1, 0, 1]), (3, [2, 0, 1])])
def test_the_instance_loss_is_the_hand_computed_one_with_k_clamped_to_small_bags(outputs, labels):
    torch.manual_seed(0)
    model = CLAMSB(6, n_outputs=outputs).train()
    bags = [torch.randn(n, 6) for n in (20, 5, 1)]  # k = 8, 2 and none (a one-instance bag has no instance term)
    padded = torch.full((3, 20, 6), float("nan"))
    mask = torch.zeros(3, 20, dtype=torch.bool)
    for i, b in enumerate(bags):
        padded[i, : len(b)], mask[i, : len(b)] = b, True
    model(padded, mask)
    got = model.instance_loss(torch.tensor(labels))
    slow = [_slow_instance_loss(model, b, y) for b, y in zip(bags, labels, strict=True)]
    assert slow[2] is None and got is not None and torch.isfinite(got)
    assert float(got.detach()) == pytest.approx(np.mean([s for s in slow if s is not None]), rel=1e-5)
    model(padded[2:], mask[2:])  # only the one-instance bag: no term, the bag loss alone
    bag_loss = torch.tensor(0.3)
    assert model.training_loss(bag_loss, torch.tensor(labels[2:])) is bag_loss and model.pending is None
    model(padded[:1, :20], mask[:1])
    total = model.training_loss(bag_loss, torch.tensor(labels[:1]))
    assert float(total.detach()) == pytest.approx(BAG_WEIGHT * 0.3 + (1 - BAG_WEIGHT) * slow[0], rel=1e-5)


def test_no_instance_term_outside_training_or_without_classes():
    model = CLAMSB(4).train()
    bag = torch.randn(1, 10, 4)
    with torch.no_grad():
        model(bag)
    assert model.pending is None
    model.eval()(bag)
    assert model.pending is None
    model.train()(bag)
    loss = torch.tensor(1.0)
    assert model.training_loss(loss, None) is loss and model.pending is None  # survival, regression: bag loss alone


def test_only_clam_reads_classes_so_the_trainer_builds_them_only_for_it():
    from mixmag.models.aggregators import AGGREGATORS

    assert {name for name, kind in AGGREGATORS.items() if kind.reads_classes} == {"clam"}


def _bags(n: int, generator: torch.Generator) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Bags of 12 noise instances in 8-d; a positive bag's first 2 instances carry +3 on feature 0."""
    labels = torch.arange(n) % 2
    bags = [torch.randn(12, 8, generator=generator) for _ in range(n)]
    for bag, y in zip(bags, labels, strict=True):
        bag[:2, 0] += 3.0 * float(y)
    return bags, labels


def test_clam_learns_a_tiny_synthetic_task():
    torch.manual_seed(1)
    generator = torch.Generator().manual_seed(1)
    model = SlideModel(8, aggregator="clam")
    (train, y_train), (test, y_test) = _bags(64, generator), _bags(64, generator)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(10):
        for start in range(0, 64, 16):
            logits = model.bag_logits(train[start : start + 16])
            bag_loss = F.binary_cross_entropy_with_logits(logits, y_train[start : start + 16].float())
            loss = model.aggregator.training_loss(bag_loss, y_train[start : start + 16])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    with torch.no_grad():
        scores = model.bag_logits(test).numpy()
        _, attention = model(torch.stack(test), torch.ones(64, 12, dtype=torch.bool))
    assert auroc(y_test.numpy(), scores) > 0.85
    positive = attention[y_test == 1]
    assert float(positive[:, :2].sum(1).mean()) > 2 / 12  # the signal instances draw more than their share


def test_a_clam_run_reloads_predicts_and_explains_with_its_attention(small_cohort, tmp_path):
    run_training(train_config(small_cohort, tmp_path / "run", aggregator="clam"))
    model, one_slide = reloaded(tmp_path / "run", small_cohort / "stores")
    assert isinstance(model.model.aggregator, CLAMSB)
    slide = one_slide["slides"]
    assert model.score([slide])[slide] == pytest.approx(float(one_slide["score"]), abs=1e-6)
    attribution = model.explain(slide)  # auto: CLAM-SB's attention, whose shares are exact
    assert attribution.method == ATTENTION
    bias = float(model.model.aggregator.classifier.bias)
    assert attribution.contribution.sum() == pytest.approx(attribution.logit - bias, abs=1e-5)
    said: list[str] = []
    inputs = prediction.read_inputs([slide], None, small_cohort / "stores")
    result = prediction.run(
        tmp_path / "run", inputs, tmp_path / "p.csv", tmp_path / "work", heatmaps=False, on_run=said.append
    )
    assert said[0].endswith("; aggregator clam")
    assert result.outcomes[0].score == pytest.approx(float(one_slide["score"]), abs=1e-6)


@pytest.mark.parametrize("task", ["multiclass", "survival", "regression"])
def test_clam_trains_every_task_type_and_reloads_to_the_same_outputs(task, tmp_path):
    table = write_outcome_cohort(tmp_path, OutcomeSpec(task, n_specimens=30))
    config = train_config(tmp_path, tmp_path / "run", cohort=str(table), task=task, aggregator="clam", epochs=1)
    metrics = run_training(config)
    assert metrics["task"] == task and np.isfinite(metrics["history"][0]["train_loss"])
    run = TrainRun(tmp_path / "run")
    classifier = SlideClassifier.load(run.folder)
    classifier.use_stores({p.stem: p for p in sorted((tmp_path / "stores").glob("*.h5"))})
    row = run.read_predictions("test")[0]
    slides = row["slides"].split(";")
    outputs = np.mean(list(classifier.outputs(slides).values()), axis=0)  # a specimen: the mean of its slides'
    columns = [f"p_{c}" for c in classifier.task.classes] if task == "multiclass" else ["score"]
    expected = [float(row[c]) for c in columns]
    assert list(outputs) == pytest.approx(expected, abs=1e-5)


def test_clam_after_a_mixer_trains_the_mixer_through_its_instance_loss():
    torch.manual_seed(3)
    model = SlideModel(8, mixer=RegionMixer(mixer_config("tiny", in_dim=8)), output="cls", aggregator="clam").train()
    regions = torch.randn(2, 5, 189, 8)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])
    logits, _ = model(regions, mask)
    loss = model.aggregator.training_loss(logits.sum() * 0, torch.tensor([1, 0]))  # the instance term alone
    loss.backward()
    grads = [p.grad for p in model.mixer.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads)
