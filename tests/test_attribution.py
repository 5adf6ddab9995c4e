"""Magnification attribution: the measures are right on models whose answer is known, and on a small benchmark
instance they point at the scale the biomarker was placed at (fine -> 20x, coarse -> 5x)."""

import numpy as np
import pytest
import torch
from train_runs import learnt_task_config

from mixmag.eval import attribution as A
from mixmag.eval.level_inputs import slide_input
from mixmag.train.finetune import Trainer


def _linear_input(weights: torch.Tensor, x: torch.Tensor, level: torch.Tensor) -> A.LevelInput:
    """f(x) = sum_j w_level(j) . x_j: the exact importance of a level is its own term."""

    def forward(xb, keep):
        keep = torch.ones(xb.shape[:2], dtype=torch.bool) if keep is None else keep
        return (torch.einsum("bnd,nd->bn", xb, weights[level]) * keep).sum(1), None

    return A.LevelInput(x, level, ["5x", "10x", "20x"], forward, removable=True)


def test_measures_on_a_linear_model_equal_each_levels_own_term():
    torch.manual_seed(0)
    level = torch.tensor([0, 1, 1, 2, 2, 2, 2, 2])
    x, w = torch.randn(8, 4), torch.randn(3, 4)
    inp = _linear_input(w, x, level)
    mean = A.level_means(inp)
    exact = np.array([float(((x[level == i] - mean[i]) * w[i]).sum()) for i in range(3)])
    np.testing.assert_allclose(A.occlusion(inp), exact, atol=1e-5)
    ig, gap = A.integrated_gradients(inp, steps=4)
    np.testing.assert_allclose(ig, exact, atol=1e-5)  # a linear model's path integral is exact
    assert gap < 1e-5
    removed = np.array([float((x[level == i] * w[i]).sum()) for i in range(3)])
    np.testing.assert_allclose(A.removal(inp), removed, atol=1e-5)


def test_integrated_gradients_are_complete_on_a_nonlinear_model():
    torch.manual_seed(1)
    level = torch.tensor([0, 1, 2, 2, 2])
    x, w = torch.randn(5, 3), torch.randn(3, 3)

    def forward(xb, keep):
        return torch.tanh(torch.einsum("bnd,nd->bn", xb, w[level])).pow(2).sum(1), None

    inp = A.LevelInput(x, level, ["5x", "10x", "20x"], forward)
    _, gap = A.integrated_gradients(inp, steps=64)
    assert gap < 1e-3


def test_importance_ratio_and_summary_name_the_level_that_matters():
    rng = np.random.default_rng(0)
    slides = []
    for k in range(30):
        imp = A.LevelImportance(f"s{k}", 1.0, ["5x", "10x", "20x"])
        imp.values[A.OCCLUSION] = np.array([0.1, 0.2, 2.0]) + rng.normal(0, 0.05, 3)
        slides.append(imp)
    ratio = A.importance_ratio(slides, A.OCCLUSION, "20x", "5x", n_boot=500)
    assert ratio.low > 5 and ratio.top_fraction == 1.0
    summary = A.cohort_summary(slides, A.OCCLUSION, n_boot=500)
    assert summary.top == "20x" and summary.clear


def _trained(tmp_path, task):
    trainer = Trainer(learnt_task_config(tmp_path, task, tmp_path / "run"))
    metrics = trainer.fit()
    assert metrics["test"]["auroc"] > 0.8, "the model must learn the task for its attribution to mean anything"
    reference = A.cohort_reference(
        [
            slide_input(trainer.classifier, sp.slides[0], trainer.cohort.stores[sp.slides[0]])
            for sp in trainer.cohort.split("train")
        ]
    )
    slides = [sp.slides[0] for sp in trainer.cohort.split("test") if sp.label == 1]
    return [
        A.level_importance(
            s, slide_input(trainer.classifier, s, trainer.cohort.stores[s]), reference=reference, steps=12
        )
        for s in slides
    ]


@pytest.mark.parametrize(("task", "placed", "other"), [("fine", "20x", "5x"), ("coarse", "5x", "20x")])
def test_causal_attribution_points_at_the_scale_the_biomarker_was_placed_at(tmp_path, task, placed, other):
    slides = _trained(tmp_path, task)
    for measure in (A.OCCLUSION, A.REMOVAL, A.INTEGRATED_GRADIENTS):
        summary = A.cohort_summary(slides, measure, n_boot=500)
        assert summary.top == placed and summary.clear, (measure, summary)
        ratio = A.importance_ratio(slides, measure, placed, other, n_boot=500)
        assert ratio.low > 2, ratio.text()
