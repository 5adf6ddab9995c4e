"""Which magnification mattered: per-level importance measures that can be checked, and their statistics.

Attention and gradient x input say where a model looked; they need not say what changed its answer
(attention shares of a model that reads 20x can sit at uniform). Two measures here act on the score:

- **level occlusion**: replace one magnification's embeddings by that level's mean embedding (or, for
  tile bags, remove them) and take the drop of the slide logit, f(x) - f(x without level i);
- **integrated gradients** (Sundararajan et al. 2017): from a baseline where every level is mean-replaced,
  the path integral of the gradient times (x - baseline), summed over each level's embeddings; the
  level totals add up to f(x) - f(baseline) (completeness), which `completeness_gap` reports.

Next to them, today's shares (AB-MIL attention where it weighs tiles or tokens; |gradient x input|)
so a report can show where they agree. `importance_ratio` summarises a level against another over
slides (geometric mean of share ratios, bootstrap CI); `cohort_summary` gives each level's mean share
with a CI and the level whose share is largest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

OCCLUSION = "level occlusion (mean-replace)"
REMOVAL = "level occlusion (remove)"
INTEGRATED_GRADIENTS = "integrated gradients"
GRADIENT_X_INPUT = "gradient x input"
ATTENTION = "AB-MIL attention"
CAUSAL_MEASURES = (OCCLUSION, REMOVAL, INTEGRATED_GRADIENTS)  # measures of a change of the score
# Below this test AUROC a model has not learnt its task, and what it attends to says nothing about which magnification
# matters: the benchmark marks such rows n/a and a report shows no "which magnification mattered" conclusion.
LEARNT_AUROC = 0.7

# forward(x (B, *shape), keep (B, N) bool or None) -> (logits (B,), attention (B, N) or None)
Forward = Callable[[torch.Tensor, torch.Tensor | None], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class LevelInput:
    """A slide's embeddings as a model reads them, with the magnification of each.

    x: (N, D) tile embeddings or (R, s, D) region tokens; level: the level index of each embedding, shaped
    like x without its last axis ((N,) or (R, s)); forward runs the slide model on a batch of such inputs.
    removable: instances can be dropped from the bag (tile bags); region tokens have fixed slots and can
    only be replaced. attention_level: the level of each AB-MIL instance when AB-MIL weighs embeddings
    of one level each (tiles, contextualized tokens), else None."""

    x: torch.Tensor
    level: torch.Tensor
    level_names: list[str]
    forward: Forward
    removable: bool = False
    attention_level: torch.Tensor | None = None


@dataclass
class LevelImportance:
    """One slide's importance of each level under each measure (raw values, in logit units for the causal ones)."""

    slide_id: str
    logit: float
    level_names: list[str]
    values: dict[str, np.ndarray] = field(default_factory=dict)  # measure -> (levels,)
    completeness_gap: float = float("nan")  # |sum IG - (f(x) - f(baseline))|
    token_fraction: np.ndarray | None = None  # each level's share of AB-MIL's instances (uniform attention's shares)

    def shares(self, measure: str) -> np.ndarray:
        """Each level's share: positive part of the importance over its sum (a level that only lowers the
        score gets 0); uniform when no level raises it."""
        v = np.clip(np.asarray(self.values[measure], np.float64), 0, None)
        return v / v.sum() if v.sum() > 0 else np.full(v.size, 1.0 / v.size)


def level_means(inp: LevelInput) -> torch.Tensor:
    """(levels, D): each level's mean embedding on this slide: the 'nothing particular here' reference."""
    flat, lv = inp.x.reshape(-1, inp.x.shape[-1]), inp.level.reshape(-1)
    means = torch.zeros(len(inp.level_names), inp.x.shape[-1], dtype=inp.x.dtype)
    for i in range(len(inp.level_names)):
        if (lv == i).any():
            means[i] = flat[lv == i].mean(0)
    return means


def cohort_reference(inputs: list[LevelInput]) -> torch.Tensor:
    """(levels, D): the mean over slides of each level's mean embedding. A reference from many slides (say the
    training slides) leaks less of one slide's own signal into 'mean-replaced' than that slide's own mean."""
    return torch.stack([level_means(inp) for inp in inputs]).mean(0)


def _replaced(inp: LevelInput, reference: torch.Tensor, levels: list[int]) -> torch.Tensor:
    pick = torch.zeros_like(inp.level, dtype=torch.bool)
    for i in levels:
        pick |= inp.level == i
    return torch.where(pick[..., None], reference[inp.level], inp.x)


def _logits(inp: LevelInput, xs: torch.Tensor, keep: torch.Tensor | None = None, chunk: int = 8) -> torch.Tensor:
    outs = []
    with torch.no_grad():
        for k in range(0, len(xs), chunk):
            outs.append(inp.forward(xs[k : k + chunk], None if keep is None else keep[k : k + chunk])[0])
    return torch.cat(outs)


def occlusion(inp: LevelInput, reference: torch.Tensor | None = None, target: int | None = None) -> np.ndarray:
    """f(x) - f(x with level i mean-replaced), per level (a multiclass model: of class `target`'s logit)."""
    reference = level_means(inp) if reference is None else reference
    n = len(inp.level_names)
    xs = torch.stack([inp.x] + [_replaced(inp, reference, [i]) for i in range(n)])
    logits = _logits(inp, xs)
    if logits.dim() > 1:  # a multiclass model: the drop of the logit of the class asked, else the slide's predicted
        logits = logits[:, int(logits[0].argmax()) if target is None else target]
    return (logits[0] - logits[1:]).numpy().astype(np.float64)


def removal(inp: LevelInput) -> np.ndarray:
    """f(x) - f(x without level i's instances), per level (tile bags only; a level that is the whole bag gives NaN)."""
    n = len(inp.level_names)
    keeps = [torch.ones_like(inp.level, dtype=torch.bool)] + [inp.level != i for i in range(n)]
    full = _logits(inp, inp.x[None], keeps[0][None])[0]
    out = np.full(n, np.nan)
    for i in range(n):
        if keeps[i + 1].any() and not keeps[i + 1].all():
            out[i] = float(full - _logits(inp, inp.x[None], keeps[i + 1][None])[0])
        elif keeps[i + 1].all():
            out[i] = 0.0  # the level is not in the bag
    return out


def integrated_gradients(
    inp: LevelInput, reference: torch.Tensor | None = None, steps: int = 24, chunk: int = 8
) -> tuple[np.ndarray, float]:
    """Per-level sums of integrated gradients from the all-levels-mean-replaced baseline (midpoint rule),
    and the completeness gap |sum - (f(x) - f(baseline))|, which shrinks as `steps` grows."""
    reference = level_means(inp) if reference is None else reference
    baseline = _replaced(inp, reference, list(range(len(inp.level_names))))
    delta = inp.x - baseline
    alphas = (torch.arange(steps, dtype=inp.x.dtype) + 0.5) / steps
    grad_sum = torch.zeros_like(inp.x)
    for k in range(0, steps, chunk):
        a = alphas[k : k + chunk].reshape(-1, *([1] * inp.x.dim()))
        path = (baseline[None] + a * delta[None]).detach().requires_grad_(True)
        inp.forward(path, None)[0].sum().backward()
        grad_sum += path.grad.sum(0)
    per_embedding = (grad_sum / steps * delta).sum(-1)
    totals = np.array([float(per_embedding[inp.level == i].sum()) for i in range(len(inp.level_names))])
    ends = _logits(inp, torch.stack([inp.x, baseline]))
    return totals, abs(float(totals.sum()) - float(ends[0] - ends[1]))


def gradient_x_input(inp: LevelInput) -> np.ndarray:
    """Per-level sums of |x . dlogit/dx| over each embedding (the measure `eval.explain` maps)."""
    x = inp.x.detach().clone()[None].requires_grad_(True)
    inp.forward(x, None)[0].sum().backward()
    per_embedding = (x.grad[0] * x[0]).sum(-1).abs().detach()
    return np.array([float(per_embedding[inp.level == i].sum()) for i in range(len(inp.level_names))])


def attention_by_level(inp: LevelInput) -> np.ndarray | None:
    """AB-MIL's attention summed per level, where its instances each belong to one level; else None."""
    if inp.attention_level is None:
        return None
    with torch.no_grad():
        _, alpha = inp.forward(inp.x[None], None)
    alpha = alpha[0]
    return np.array([float(alpha[inp.attention_level == i].sum()) for i in range(len(inp.level_names))])


def level_importance(
    slide_id: str, inp: LevelInput, *, reference: torch.Tensor | None = None, steps: int = 24
) -> LevelImportance:
    """Every measure for one slide."""
    with torch.no_grad():
        logit = float(inp.forward(inp.x[None], None)[0][0])
    out = LevelImportance(slide_id, logit, list(inp.level_names))
    out.values[OCCLUSION] = occlusion(inp, reference)
    if inp.removable:
        out.values[REMOVAL] = removal(inp)
    out.values[INTEGRATED_GRADIENTS], out.completeness_gap = integrated_gradients(inp, reference, steps)
    out.values[GRADIENT_X_INPUT] = gradient_x_input(inp)
    attention = attention_by_level(inp)
    if attention is not None:
        out.values[ATTENTION] = attention
        counts = np.array([float((inp.attention_level == i).sum()) for i in range(len(inp.level_names))])
        out.token_fraction = counts / counts.sum()
    return out


# -- over slides ------------------------------------------------------------------------------


@dataclass
class RatioStatistic:
    """Geometric mean over slides of share(a) / share(b), with a bootstrap CI over slides."""

    measure: str
    numerator: str
    denominator: str
    ratio: float
    low: float
    high: float
    slides: int
    top_fraction: float  # slides on which `numerator` has the largest share

    def text(self) -> str:
        return (
            f"{self.measure}: {self.numerator}/{self.denominator} importance ratio {self.ratio:.2f} "
            f"(95% CI {self.low:.2f}-{self.high:.2f}, {self.slides} slides; {self.numerator} largest on "
            f"{100 * self.top_fraction:.0f}%)"
        )


def _bootstrap_mean(values: np.ndarray, n_boot: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def importance_ratio(
    slides: list[LevelImportance],
    measure: str,
    numerator: str,
    denominator: str,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    floor: float = 1e-3,
) -> RatioStatistic:
    """share(numerator) / share(denominator) per slide (shares floored at `floor` so one zero cannot make
    it infinite), summarised as exp(mean log ratio) with a percentile bootstrap CI over slides."""
    usable = [s for s in slides if measure in s.values]
    if not usable:
        raise ValueError(f"no slide has the measure {measure!r}")
    names = usable[0].level_names
    a, b = names.index(numerator), names.index(denominator)
    shares = np.stack([s.shares(measure) for s in usable])
    logs = np.log(np.clip(shares[:, a], floor, None)) - np.log(np.clip(shares[:, b], floor, None))
    low, high = _bootstrap_mean(logs, n_boot, seed)
    top = float(np.mean(np.argmax(shares, axis=1) == a))
    return RatioStatistic(
        measure,
        numerator,
        denominator,
        float(np.exp(logs.mean())),
        float(np.exp(low)),
        float(np.exp(high)),
        len(usable),
        top,
    )


@dataclass
class LevelSummary:
    """Each level's mean share over slides with a bootstrap CI, for one measure."""

    measure: str
    level_names: list[str]
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    slides: int

    @property
    def top(self) -> str:
        return self.level_names[int(np.argmax(self.mean))]

    @property
    def clear(self) -> bool:
        """The top level's CI lies above every other level's CI."""
        k = int(np.argmax(self.mean))
        return all(self.low[k] > self.high[j] for j in range(len(self.mean)) if j != k)


def cohort_summary(slides: list[LevelImportance], measure: str, *, n_boot: int = 2000, seed: int = 0) -> LevelSummary:
    usable = [s for s in slides if measure in s.values]
    if not usable:
        raise ValueError(f"no slide has the measure {measure!r}")
    shares = np.stack([s.shares(measure) for s in usable])
    bounds = np.array([_bootstrap_mean(shares[:, i], n_boot, seed) for i in range(shares.shape[1])])
    return LevelSummary(measure, usable[0].level_names, shares.mean(0), bounds[:, 0], bounds[:, 1], len(usable))


def recovers(summary: LevelSummary, ratio: RatioStatistic, placed: str) -> bool:
    """A measure recovers the scale a biomarker was placed at when that level has the largest mean share AND its
    share ratio to the other level is above 1 with 95% confidence: either alone can come from one slide's noise."""
    return summary.top == placed and ratio.numerator == placed and ratio.low > 1


def measures_of(slides: list[LevelImportance]) -> list[str]:
    """The measures every slide has, causal ones first."""
    common = set.intersection(*(set(s.values) for s in slides)) if slides else set()
    order = [OCCLUSION, REMOVAL, INTEGRATED_GRADIENTS, ATTENTION, GRADIENT_X_INPUT]
    return [m for m in order if m in common]
