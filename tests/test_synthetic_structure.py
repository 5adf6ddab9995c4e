"""The structure knob of the synthetic stores (issue 25 item 3): at 1 (the default, what the benchmark always used)
a 5x token is predictable from its 20x children; at 0 nothing is, so MEM has nothing to learn."""

import numpy as np
import pytest

from mixmag.errors import ConfigError
from mixmag.synth.benchmark import BenchmarkSpec
from mixmag.synth.stores import synthetic_store


def _r2_of_5x_from_children(structure: float) -> float:
    """Held-out R^2 of a least-squares map from the mean of a cell's 20x tiles to its 5x token."""
    xs, ys = [], []
    for k in range(30):
        s = synthetic_store(f"s{k}", n_rows=6, n_cols=6, dim=16, seed=k, structure=structure)
        xs.append(s.embeddings["20x"].mean(1))
        ys.append(s.embeddings["5x"][:, 0])
    x, y = np.concatenate(xs), np.concatenate(ys)
    half = len(x) // 2
    design = np.c_[x, np.ones(len(x))]
    coef, *_ = np.linalg.lstsq(design[:half], y[:half], rcond=None)
    residual = y[half:] - design[half:] @ coef
    return float(1 - residual.var(0).sum() / y[half:].var(0).sum())


def test_structure_makes_coarse_tokens_predictable_from_fine_ones_and_zero_removes_it():
    full, half, none = (_r2_of_5x_from_children(s) for s in (1.0, 0.5, 0.0))
    assert full > 0.6  # measured 0.75: the default generator is not independent tokens
    assert none < 0.1
    assert full > half > none


def test_structure_one_is_the_store_the_generator_always_made():
    a = synthetic_store("s", n_rows=3, n_cols=3, dim=8, seed=3)
    b = synthetic_store("s", n_rows=3, n_cols=3, dim=8, seed=3, structure=1.0)
    assert all(np.array_equal(a.embeddings[k], b.embeddings[k]) for k in a.embeddings)


def test_structure_is_bounded():
    with pytest.raises(ValueError):
        synthetic_store("s", structure=1.5)
    with pytest.raises(ConfigError, match="structure"):
        BenchmarkSpec(task="fine", structure=-0.1)
