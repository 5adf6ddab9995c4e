"""The slide aggregators by name (the training config's `aggregator:`): adding one is a model file implementing
`mixmag.models.aggregator:Aggregator` and one line here."""

from __future__ import annotations

from typing import Literal

from ..errors import ConfigError
from .abmil import GatedABMIL
from .aggregator import Aggregator
from .clam import CLAMSB
from .meanpool import MeanPool
from .transmil import TransMIL

AGGREGATORS: dict[str, type[Aggregator]] = {
    "abmil": GatedABMIL,  # gated attention MIL (Ilse et al. 2018; the paper's eq. 7-8)
    "mean": MeanPool,  # mean pooling + a linear classifier
    "transmil": TransMIL,  # a two-layer transformer with pyramid position encoding (Shao et al. 2021)
    "clam": CLAMSB,  # CLAM-SB: gated attention plus instance clustering on pseudo-labels (Lu et al. 2021)
}
# AGGREGATORS' names, for configs (a test keeps the two equal)
AggregatorName = Literal["abmil", "mean", "transmil", "clam"]


def aggregator_name(aggregator: Aggregator) -> str:
    """The registry name of a built aggregator (what the run's config records)."""
    return next(name for name, kind in AGGREGATORS.items() if type(aggregator) is kind)


def build_aggregator(name: str, in_dim: int, hidden: int, n_outputs: int) -> Aggregator:
    """A fresh aggregator of this name (its weights drawn from torch's random state, as the name's class draws them)."""
    if name not in AGGREGATORS:
        raise ConfigError(f"unknown aggregator {name!r}; use one of {', '.join(AGGREGATORS)}")
    return AGGREGATORS[name](in_dim, hidden, n_outputs)
