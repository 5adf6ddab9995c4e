"""Task types of slide-level training, one class each: the model's outputs, the loss with its specimen rule, how slide
outputs become specimen outputs, the metrics of a split (the primary one selects the model on tune) and the columns
of the predictions table. The trainer and the trained classifier ask the task; nothing else branches on its type.

Specimen rules (docs/method.md, "Task types"): binary, multiclass and regression keep eq. 9, a specimen's loss is the
smallest of its slides' losses; survival cannot, since the Cox partial likelihood couples the specimens of a batch
(a slide's loss is not defined alone), so a specimen's risk is the mean of its slides' risks and the Cox loss is
taken over the batch's specimens.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import ClassVar, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel

from ..data.cohort import Cohort, Specimen
from ..errors import RunError
from ..metrics import (
    auroc,
    balanced_accuracy,
    bootstrap_auroc,
    bootstrap_estimate,
    confusion,
    harrell_c,
    logrank,
    macro_auroc,
    mean_absolute_error,
    pearson,
    per_class_auroc,
    spearman,
    specimen_scores,
    uno_c,
)
from ..runs import SLIDE_SEPARATOR, TASK_PREDICTION_FIELDS, TaskPipeline, TaskRow

TaskType = Literal["binary", "multiclass", "survival", "regression"]
TASK_TYPES = get_args(TaskType)
PRIMARY = {"binary": "auroc", "multiclass": "macro_auroc", "survival": "c_index", "regression": "spearman"}
STRATIFY_COLUMN = {"binary": "label", "multiclass": "label", "survival": "event", "regression": "target"}
HUBER_DELTA = 1.0  # in units of the train split's target standard deviation


def cox_partial_likelihood(risk: torch.Tensor, time: torch.Tensor, event: torch.Tensor) -> torch.Tensor:
    """Negative Cox partial log-likelihood with Breslow ties, averaged over the events (0 when there is none):
    -(1/d) sum_{i: event} (r_i - log sum_{j: t_j >= t_i} exp r_j). Every specimen tied at an event time is in its
    risk set (Breslow). Vectorised over an (n, n) risk-set mask: batches are specimens, tens to hundreds."""
    at_risk = time[None, :] >= time[:, None]  # [i, j]: j is at risk at i's time
    log_denominator = torch.logsumexp(risk[None, :].masked_fill(~at_risk, float("-inf")), dim=1)
    terms = (risk - log_denominator) * event
    return -terms.sum() / event.sum().clamp(min=1)


def min_over_slides(per_slide: torch.Tensor, owner: torch.Tensor, n_specimens: int) -> torch.Tensor:
    """Eq. 9: each specimen's loss is the smallest of its slides'; the batch's loss is their mean."""
    per_specimen = torch.full((n_specimens,), float("inf"), device=per_slide.device).scatter_reduce(
        0, owner, per_slide, reduce="amin"
    )
    return per_specimen.mean()


class Task:
    """The binary task (today's): one logit, label-smoothed BCE, AUROC. Subclasses change what differs."""

    name: ClassVar[str] = "binary"

    def __init__(self, cohort: Cohort | None = None, pipeline: TaskPipeline | BaseModel | dict | None = None) -> None:
        self.classes: tuple[str, ...] = cohort.classes if cohort is not None else ()

    @property
    def primary(self) -> str:
        return PRIMARY[self.name]

    @property
    def n_outputs(self) -> int:
        return 1

    def pipeline(self) -> dict:
        """What prediction needs of the task besides the weights (recorded in pipeline.json)."""
        return {}

    # -- training -----------------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, owner: torch.Tensor, specimens: list[Specimen], smoothing: float):
        labels = torch.tensor([float(sp.label) for sp in specimens], device=logits.device)[owner]
        target = labels * (1 - smoothing) + smoothing / 2
        per_slide = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        return min_over_slides(per_slide, owner, len(specimens))

    def classes_of(self, specimens: list[Specimen]) -> torch.Tensor | None:
        """Each specimen's class index, for an aggregator that pseudo-labels instances by the bag's class (CLAM-SB);
        None for tasks without classes (survival, regression)."""
        return torch.tensor([int(sp.label) for sp in specimens], dtype=torch.long)

    # -- outputs ------------------------------------------------------------------------------------------------
    def transform(self, logits: torch.Tensor) -> torch.Tensor:
        """A slide's outputs from its logits: here the probability."""
        return torch.sigmoid(logits)

    def specimen_outputs(
        self, slide_outputs: dict[str, np.ndarray], specimens: list[Specimen], reduce: str
    ) -> dict[str, np.ndarray]:
        """A specimen's outputs from its slides' (binary: `specimen_score`, max or mean; the others: the mean)."""
        if self.n_outputs == 1 and self.name == "binary":
            flat = {s: float(v[0]) for s, v in slide_outputs.items()}
            owner = {s: sp.specimen_id for sp in specimens for s in sp.slides}
            spec = specimen_scores(flat, owner, reduce)
            return {sp.specimen_id: np.array([spec[sp.specimen_id]]) for sp in specimens}
        return {sp.specimen_id: np.mean([slide_outputs[s] for s in sp.slides], axis=0) for sp in specimens}

    # -- metrics ------------------------------------------------------------------------------------------------
    def truth(self, specimens: list[Specimen]) -> tuple[np.ndarray, ...]:
        """The columns the primary metric compares scores with (paired comparisons resample them together)."""
        return (np.array([sp.label for sp in specimens]),)

    def primary_metric(self, *columns: np.ndarray) -> float:
        """The primary metric of (truth columns..., scores); higher is better."""
        return auroc(*columns)

    def scores(self, specimens: list[Specimen], outputs: dict[str, np.ndarray]) -> np.ndarray:
        """The specimens' scores the primary metric reads: (n,) or (n, classes)."""
        return np.array([float(outputs[sp.specimen_id][0]) for sp in specimens])

    def tune_value(self, specimens: list[Specimen], outputs: dict[str, np.ndarray]) -> float | None:
        """The primary metric, None where it is undefined on these specimens."""
        try:
            return float(self.primary_metric(*self.truth(specimens), self.scores(specimens, outputs)))
        except ValueError:
            return None

    def split_metrics(
        self, specimens: list[Specimen], outputs: dict[str, np.ndarray], reference: dict, n_boot: int, seed: int
    ) -> dict:
        """metrics.json's entry of a split (`reference`: the tune split's outputs, for thresholds fixed on tune)."""
        labels = [sp.label for sp in specimens]
        ci = bootstrap_auroc(labels, self.scores(specimens, outputs), n_boot=n_boot, seed=seed)
        return {"auroc": ci.auroc, "ci95": [ci.low, ci.high], "specimens": len(specimens), "positive": int(sum(labels))}

    def _estimate(self, specimens, outputs, n_boot: int, seed: int, metric=None) -> tuple[float, list[float]]:
        columns = (*self.truth(specimens), self.scores(specimens, outputs))
        est = bootstrap_estimate(metric or self.primary_metric, columns, n_boot=n_boot, seed=seed)
        return est.value, [est.low, est.high]

    # -- predictions table --------------------------------------------------------------------------------------
    def prediction_fields(self) -> tuple[str, ...]:
        return TASK_PREDICTION_FIELDS[self.name]

    def from_rows(self, rows: Sequence[TaskRow | Mapping]) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
        """(truth columns, scores) from a predictions table's checked rows (`TrainRun.read_task_rows`, or as read by
        `TrainRun.read_predictions`), e.g. the out-of-fold rows of a cross-validation pooled."""
        typed = [TaskRow.of(r) for r in rows]
        return (np.array([r.binary_label for r in typed]),), np.array([r.score for r in typed])

    def pooled(self, rows: Sequence[TaskRow | Mapping], n_boot: int, seed: int) -> dict:
        """The primary metric of predictions table rows with its bootstrap interval (binary: stratified, as a run's)."""
        truth, scores = self.from_rows(rows)
        if self.name == "binary":
            ci = bootstrap_auroc(truth[0], scores, n_boot=n_boot, seed=seed)
            value, interval = ci.auroc, [ci.low, ci.high]
        else:
            est = bootstrap_estimate(self.primary_metric, (*truth, scores), n_boot=n_boot, seed=seed)
            value, interval = est.value, [est.low, est.high]
        return {self.primary: value, "ci95": interval, "specimens": len(rows)}

    def prediction_row(self, sp: Specimen, slide_outputs: dict, outputs: dict, reference: dict) -> dict:
        return {
            "specimen": sp.specimen_id,
            "label": sp.label,
            "score": f"{float(outputs[sp.specimen_id][0]):.6f}",
            "slides": SLIDE_SEPARATOR.join(sp.slides),
            "slide_scores": SLIDE_SEPARATOR.join(f"{float(slide_outputs[s][0]):.6f}" for s in sp.slides),
        }


class MulticlassTask(Task):
    """One logit a class, softmax; cross-entropy (label-smoothed) with eq. 9; macro one-vs-rest AUROC."""

    name = "multiclass"

    @property
    def n_outputs(self) -> int:
        return len(self.classes)

    def pipeline(self) -> dict:
        return {"classes": list(self.classes)}

    def __init__(self, cohort: Cohort | None = None, pipeline: TaskPipeline | BaseModel | dict | None = None) -> None:
        super().__init__(cohort, pipeline)
        if cohort is None:
            self.classes = tuple(TaskPipeline.of(pipeline).classes)

    def loss(self, logits, owner, specimens, smoothing):
        labels = torch.tensor([sp.label for sp in specimens], device=logits.device)[owner]
        per_slide = F.cross_entropy(logits, labels, label_smoothing=smoothing, reduction="none")
        return min_over_slides(per_slide, owner, len(specimens))

    def transform(self, logits):
        return torch.softmax(logits, dim=-1)

    def primary_metric(self, *columns):
        return macro_auroc(*columns)

    def scores(self, specimens, outputs):
        return np.stack([outputs[sp.specimen_id] for sp in specimens])

    def split_metrics(self, specimens, outputs, reference, n_boot, seed):
        labels, probs = self.truth(specimens)[0], self.scores(specimens, outputs)
        value, ci = self._estimate(specimens, outputs, n_boot, seed)
        predicted = probs.argmax(1)
        return {
            "macro_auroc": value,
            "ci95": ci,
            "specimens": len(specimens),
            "classes": list(self.classes),
            "per_class_auroc": dict(zip(self.classes, per_class_auroc(labels, probs), strict=True)),
            "balanced_accuracy": balanced_accuracy(labels, predicted, len(self.classes)),
            "confusion": confusion(labels, predicted, len(self.classes)),
        }

    def prediction_fields(self):
        fixed = TASK_PREDICTION_FIELDS[self.name]
        return (*fixed[:4], *(f"p_{c}" for c in self.classes), *fixed[4:])

    def from_rows(self, rows):
        typed = [TaskRow.of(r) for r in rows]
        labels = np.array([self.classes.index(r.label) for r in typed])
        return (labels,), np.array([[r.probabilities[c] for c in self.classes] for r in typed])

    def prediction_row(self, sp, slide_outputs, outputs, reference):
        probs = outputs[sp.specimen_id]
        best = int(np.argmax(probs))
        return {
            "specimen": sp.specimen_id,
            "label": self.classes[sp.label],
            "predicted": self.classes[best],
            "score": f"{probs[best]:.6f}",
            **{f"p_{c}": f"{p:.6f}" for c, p in zip(self.classes, probs, strict=True)},
            "slides": SLIDE_SEPARATOR.join(sp.slides),
            "slide_scores": SLIDE_SEPARATOR.join(f"{slide_outputs[s][best]:.6f}" for s in sp.slides),
        }


class SurvivalTask(Task):
    """One output, the log-risk (higher = earlier event); Cox partial likelihood (Breslow ties) over the batch's
    specimens, a specimen's risk being the mean of its slides'; Harrell's C-index (Uno's beside it)."""

    name = "survival"

    def loss(self, logits, owner, specimens, smoothing):
        n = len(specimens)
        counts = torch.zeros(n, device=logits.device).index_add_(0, owner, torch.ones_like(logits))
        risk = torch.zeros(n, device=logits.device, dtype=logits.dtype).index_add_(0, owner, logits) / counts
        time = torch.tensor([sp.time for sp in specimens], device=logits.device, dtype=torch.float64)
        event = torch.tensor([float(sp.label) for sp in specimens], device=logits.device, dtype=logits.dtype)
        return cox_partial_likelihood(risk, time, event)

    def classes_of(self, specimens):
        return None  # an event is an outcome, not a class the bag's instances show

    def transform(self, logits):
        return logits

    def truth(self, specimens):
        return np.array([sp.time for sp in specimens]), np.array([sp.label for sp in specimens])

    def primary_metric(self, *columns):
        return harrell_c(*columns)

    def split_metrics(self, specimens, outputs, reference, n_boot, seed):
        time, event = self.truth(specimens)
        value, ci = self._estimate(specimens, outputs, n_boot, seed)
        try:  # Uno's (censoring-weighted) beside Harrell's: the one to read when censoring is heavy
            uno, uno_ci = self._estimate(specimens, outputs, n_boot, seed, uno_c)
        except ValueError:  # the censoring survival is 0 at an event time, or no comparable pair
            uno, uno_ci = None, None
        groups = self.risk_groups(specimens, outputs, reference)
        try:
            p = logrank(time, event, groups == "high").p_value
        except ValueError:  # one group only, or no event where both are at risk
            p = None
        return {
            "c_index": value,
            "ci95": ci,
            "uno_c_index": uno,
            "uno_ci95": uno_ci,
            "specimens": len(specimens),
            "events": int(event.sum()),
            "high_risk": int((groups == "high").sum()),
            "logrank_p": p,
        }

    def pooled(self, rows, n_boot, seed):
        """Harrell's C-index of predictions table rows with its interval, and Uno's beside it."""
        out = super().pooled(rows, n_boot, seed)
        truth, scores = self.from_rows(rows)
        try:
            est = bootstrap_estimate(uno_c, (*truth, scores), n_boot=n_boot, seed=seed)
            out |= {"uno_c_index": est.value, "uno_ci95": [est.low, est.high]}
        except ValueError:  # the censoring survival is 0 at an event time, or no comparable pair
            out |= {"uno_c_index": None, "uno_ci95": None}
        return out

    @staticmethod
    def risk_groups(specimens, outputs, reference) -> np.ndarray:
        """ "high" above the tune split's median risk, else "low" (the threshold is fixed on tune)."""
        cut = float(np.median([float(v[0]) for v in reference.values()]))
        return np.array(["high" if float(outputs[sp.specimen_id][0]) > cut else "low" for sp in specimens])

    def from_rows(self, rows):
        typed = [TaskRow.of(r) for r in rows]
        truth = (np.array([r.time for r in typed], dtype=float), np.array([r.event for r in typed], dtype=int))
        return truth, np.array([r.score for r in typed])

    def prediction_row(self, sp, slide_outputs, outputs, reference):
        row = super().prediction_row(sp, slide_outputs, outputs, reference)
        group = self.risk_groups([sp], outputs, reference)[0]
        return {"specimen": sp.specimen_id, "time": sp.time, "event": sp.label, "score": row["score"]} | {
            "risk_group": group,
            "slides": row["slides"],
            "slide_scores": row["slide_scores"],
        }


class RegressionTask(Task):
    """One output, the target standardised on the train split; Huber loss with eq. 9; Spearman (Pearson, MAE too)."""

    name = "regression"

    def __init__(self, cohort: Cohort | None = None, pipeline: TaskPipeline | BaseModel | dict | None = None) -> None:
        super().__init__(cohort, pipeline)
        if cohort is not None:
            train = np.array([sp.target for sp in cohort.split("train")])
            self.mean, self.std = float(train.mean()), float(train.std()) or 1.0
        else:
            scale = TaskPipeline.of(pipeline)
            self.mean = math.nan if scale.target_mean is None else scale.target_mean
            self.std = math.nan if scale.target_std is None else scale.target_std
        if not (math.isfinite(self.mean) and math.isfinite(self.std) and self.std > 0):
            raise RunError(
                "a regression run's pipeline.json needs finite target_mean and positive target_std (the target's scale "
                "on the train split); train the run again with `mixmag train`"
            )

    def pipeline(self) -> dict:
        return {"target_mean": self.mean, "target_std": self.std}

    def loss(self, logits, owner, specimens, smoothing):
        target = torch.tensor([(sp.target - self.mean) / self.std for sp in specimens], device=logits.device)
        per_slide = F.huber_loss(logits, target.to(logits.dtype)[owner], reduction="none", delta=HUBER_DELTA)
        return min_over_slides(per_slide, owner, len(specimens))

    def classes_of(self, specimens):
        return None  # a continuous target has no class to pseudo-label instances with

    def transform(self, logits):
        return logits * self.std + self.mean

    def truth(self, specimens):
        return (np.array([sp.target for sp in specimens]),)

    def primary_metric(self, *columns):
        return spearman(*columns)

    def split_metrics(self, specimens, outputs, reference, n_boot, seed):
        value, ci = self._estimate(specimens, outputs, n_boot, seed)
        r, r_ci = self._estimate(specimens, outputs, n_boot, seed, pearson)
        mae, mae_ci = self._estimate(specimens, outputs, n_boot, seed, mean_absolute_error)
        return {
            "spearman": value,
            "ci95": ci,
            "specimens": len(specimens),
            "pearson": r,
            "pearson_ci95": r_ci,
            "mae": mae,
            "mae_ci95": mae_ci,
        }

    def from_rows(self, rows):
        typed = [TaskRow.of(r) for r in rows]
        return (np.array([r.target for r in typed], dtype=float),), np.array([r.score for r in typed])

    def prediction_row(self, sp, slide_outputs, outputs, reference):
        row = super().prediction_row(sp, slide_outputs, outputs, reference)
        return {"specimen": sp.specimen_id, "target": sp.target} | {k: row[k] for k in self.prediction_fields()[2:]}


TASKS: dict[str, type[Task]] = {
    "binary": Task,
    "multiclass": MulticlassTask,
    "survival": SurvivalTask,
    "regression": RegressionTask,
}


def task_for(name: str, cohort: Cohort | None = None, pipeline: TaskPipeline | BaseModel | dict | None = None) -> Task:
    """The task of a training (from its cohort) or of a trained run (from its pipeline.json)."""
    return TASKS[name](cohort, pipeline)
