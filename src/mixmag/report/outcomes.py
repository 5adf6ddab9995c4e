"""The report's figures for task types beyond binary: Kaplan-Meier curves of the risk groups with the log-rank p
(survival), the confusion matrix (multiclass), predicted against true values (regression). Each takes a split's
typed predictions rows (`TrainRun.read_task_rows`) and its metrics.json entry (`TaskSplitMetrics`) and returns a
matplotlib figure."""

from __future__ import annotations

import numpy as np

from ..markup import plot_text
from ..metrics import kaplan_meier
from ..runs import TaskRow, TaskSplitMetrics


def _axes(figsize: tuple[float, float]):
    """A figure and its axes on the Agg backend (matplotlib is loaded when a report draws, as in report.html)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize)


def survival_figure(rows: list[TaskRow], metrics: TaskSplitMetrics, split: str):
    """Kaplan-Meier curves of the high- and low-risk groups (split at the tune median risk), log-rank p in the title."""
    time = np.array([r.time for r in rows], dtype=float)
    event = np.array([r.event == 1 for r in rows])
    group = np.array([r.risk_group for r in rows])
    fig, ax = _axes((5.5, 4))
    for name, colour in (("high", "#c0504d"), ("low", "#1f5a96")):
        chosen = group == name
        if chosen.any():
            t, s = kaplan_meier(time[chosen], event[chosen])
            ax.step(t, s, where="post", color=colour, label=f"{name} risk ({int(chosen.sum())})")
    p = metrics.logrank_p
    uno = metrics.uno_c_index
    uno_text = "" if uno is None else f" (Uno's {uno:.3f})"
    ax.set_title(
        f"{split}: C-index {metrics.value('c_index'):.3f}{uno_text}; log-rank p " + ("n/a" if p is None else f"{p:.3g}")
    )
    ax.set_xlabel("time")
    ax.set_ylabel("survival (Kaplan-Meier)")
    ax.set_ylim(0, 1.02)
    ax.legend()
    return fig


def confusion_figure(rows: list[TaskRow], metrics: TaskSplitMetrics, split: str):
    """The confusion matrix (true class in rows), counts written in the cells."""
    classes = metrics.classes or []
    counts = np.asarray(metrics.confusion)
    fig, ax = _axes((1.2 * len(classes) + 2.5, 1.2 * len(classes) + 1.5))
    ax.imshow(counts, cmap="Blues")
    for (i, j), n in np.ndenumerate(counts):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > counts.max() / 2 else "black")
    names = [plot_text(c) for c in classes]  # the table's class names, drawn as written
    ax.set_xticks(range(len(classes)), names)
    ax.set_yticks(range(len(classes)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = metrics.balanced_accuracy
    ax.set_title(f"{split}: macro AUROC {metrics.value('macro_auroc'):.3f}, balanced accuracy {accuracy:.3f}")
    return fig


def regression_figure(rows: list[TaskRow], metrics: TaskSplitMetrics, split: str):
    """Predicted against true values with the identity line."""
    target = np.array([r.target for r in rows], dtype=float)
    predicted = np.array([r.score for r in rows])
    fig, ax = _axes((4.5, 4.5))
    ax.scatter(target, predicted, s=14, color="#1f5a96")
    ends = [min(target.min(), predicted.min()), max(target.max(), predicted.max())]
    ax.plot(ends, ends, color="grey", ls=":")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(f"{split}: Spearman {metrics.value('spearman'):.3f}, MAE {metrics.mae:.3g}")
    return fig


OUTCOME_FIGURES = {"survival": survival_figure, "multiclass": confusion_figure, "regression": regression_figure}
