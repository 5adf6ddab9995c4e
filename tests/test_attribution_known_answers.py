"""Known answers for the pieces the attribution check rests on (issue 25 item 6): each test fails under a plausible
mutation that the rest of the suite would let through: a reference of zeros or of another level's means, a swapped
TASK_SCALE, 'or' for 'and' in `recovers`."""

import numpy as np
import pytest
import torch

from mixmag.eval import attribution as A
from mixmag.synth.benchmark import TASK_SCALE, BenchmarkSpec, benchmark_slide

LEVELS = ["5x", "10x", "20x"]


def _linear(weights: torch.Tensor, x: torch.Tensor, level: torch.Tensor) -> A.LevelInput:
    def forward(xb, keep):
        return torch.einsum("bnd,nd->bn", xb, weights[level]).sum(1), None

    return A.LevelInput(x, level, LEVELS, forward, removable=True)


def _slide(offsets: list[float], seed: int) -> A.LevelInput:
    """A slide whose level i embeddings sit around offsets[i] (levels far apart, so a reference taken from the wrong
    level, or zeros, moves every occlusion value)."""
    g = torch.Generator().manual_seed(seed)
    level = torch.tensor([0, 1, 1, 2, 2, 2, 2])
    x = torch.randn(7, 3, generator=g) + torch.tensor(offsets)[level][:, None]
    return _linear(torch.ones(3, 3), x, level)


def test_cohort_reference_is_the_mean_over_slides_of_each_levels_mean():
    slides = [_slide([10.0, -5.0, 3.0], 0), _slide([12.0, -7.0, 1.0], 1), _slide([8.0, -6.0, 2.0], 2)]
    reference = A.cohort_reference(slides)
    expected = torch.stack([torch.stack([s.x[s.level == i].mean(0) for i in range(3)]) for s in slides]).mean(
        0
    )  # written out: per slide, per level, the mean of that level's tokens; then over slides
    torch.testing.assert_close(reference, expected)
    assert reference.shape == (3, 3)
    assert reference[0].mean() > 8 and reference[1].mean() < -4  # each row is its own level's, in level order


def test_occlusion_against_a_cohort_reference_replaces_each_level_by_its_own_reference_row():
    slides = [_slide([10.0, -5.0, 3.0], 0), _slide([12.0, -7.0, 1.0], 1)]
    reference = A.cohort_reference(slides)
    target = _slide([11.0, -4.0, 2.5], 3)
    w = torch.ones(3, 3)
    exact = np.array(
        [float(((target.x[target.level == i] - reference[i]) * w[i]).sum()) for i in range(3)]
    )  # f(x) - f(x with level i's tokens set to reference row i), for f linear
    np.testing.assert_allclose(A.occlusion(target, reference), exact, rtol=1e-5, atol=1e-4)
    zeros = np.array([float((target.x[target.level == i] * w[i]).sum()) for i in range(3)])
    assert np.abs(A.occlusion(target, reference) - zeros).max() > 5  # a zero reference would give these


@pytest.mark.parametrize("task", sorted(TASK_SCALE))
def test_task_scale_names_the_level_the_generator_marks(task):
    """The same random draws make a positive and a negative slide that differ only by the biomarker: the level
    whose embeddings differ is the task's declared scale, and no other level differs."""
    spec = BenchmarkSpec(task=task, n_specimens=10, dim=8, cells=6, decoy_rate=0.0)
    positive = benchmark_slide(spec, "p", True, np.random.default_rng(5))
    negative = benchmark_slide(spec, "n", False, np.random.default_rng(5))
    changed = [
        name
        for name in positive.level_names
        if not np.array_equal(positive.embeddings[name], negative.embeddings[name])
    ]
    assert changed == [TASK_SCALE[task]]


def _summary(top_share: float, other_share: float) -> A.LevelSummary:
    mean = np.array([other_share, 0.0, top_share])
    return A.LevelSummary(A.OCCLUSION, LEVELS, mean, mean - 0.05, mean + 0.05, 20)


def _ratio(numerator: str, low: float) -> A.RatioStatistic:
    return A.RatioStatistic(A.OCCLUSION, numerator, "5x", max(low, 1.0) * 2, low, low * 4, 20, 0.9)


@pytest.mark.parametrize(
    ("top_share", "low", "expected"),
    [
        (0.8, 1.5, True),  # 20x on top and its ratio to 5x above 1 with confidence
        (0.8, 0.7, False),  # on top, but the ratio's CI reaches below 1
        (0.2, 1.5, False),  # the ratio clears 1 but 5x has the larger mean share
        (0.2, 0.7, False),
    ],
)
def test_recovers_needs_the_top_level_and_a_confident_ratio(top_share, low, expected):
    summary = _summary(top_share, 1 - top_share)
    assert A.recovers(summary, _ratio("20x", low), "20x") is expected


def test_recovers_refuses_a_ratio_about_another_level():
    summary = _summary(0.8, 0.2)
    assert not A.recovers(summary, _ratio("10x", 3.0), "20x")
