"""The report panel "Which magnification mattered": per-level importance over the positive test slides (binary runs),
the high-risk ones (survival), those predicted high (regression), or per predicted class (multiclass: `class_table`).

It leads with the measures that act on the score (level occlusion, integrated gradients), gives each
level's mean share with a bootstrap CI and the importance ratio of the top level to the least important
one, and sets attention and gradient x input beside them, saying so where attention points elsewhere.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from ..errors import MixmagError
from ..eval.attribution import (
    ATTENTION,
    CAUSAL_MEASURES,
    LEARNT_AUROC,
    OCCLUSION,
    LevelImportance,
    attention_by_level,
    cohort_summary,
    importance_ratio,
    measures_of,
    occlusion,
)
from ..eval.level_inputs import prepared_run, reads_one_level, run_level_importance, slide_input
from ..runs import PredictionRow, RunMetrics, RunModelRecord, TaskRow, TaskRunMetrics, TrainRun, judged_auroc

PER_CLASS_SLIDES = 8  # test slides explained per predicted class (the most confident first)


def positive_test_slides(rows: list[PredictionRow]) -> list[str]:
    """Slides of positive test specimens, highest score first (where a biomarker, if learnt, is)."""
    slides = [pair for r in rows if r.label == 1 for pair in r.slide_pairs()]
    return [s for s, _ in sorted(slides, key=lambda x: -x[1])]


def summary_rows(slides: list[LevelImportance], n_boot: int = 1000) -> list[dict]:
    """One row per measure: shares with CIs, top level, whether it is clear, and top vs least important ratio."""
    rows = []
    for measure in measures_of(slides):
        summary = cohort_summary(slides, measure, n_boot=n_boot)
        low_level = summary.level_names[int(np.argmin(summary.mean))]
        ratio = (
            importance_ratio(slides, measure, summary.top, low_level, n_boot=n_boot)
            if low_level != summary.top
            else None
        )
        rows.append({"measure": measure, "summary": summary, "ratio": ratio})
    return rows


def verdict(rows: list[dict], token_fraction: np.ndarray | None) -> str:
    """Plain words: which level the causal measures name, and whether attention agrees."""
    causal = [r for r in rows if r["measure"] in CAUSAL_MEASURES]
    if not causal:
        return "No measure of a change of the score is available for this model."
    lead = causal[0]["summary"]
    words = f"Removing or mean-replacing one magnification changes the score most for <b>{html.escape(lead.top)}</b>"
    words += (
        " (its CI lies above the others')."
        if lead.clear
        else ", but the CIs overlap: no magnification stands out clearly."
    )
    attention = next((r["summary"] for r in rows if r["measure"] == ATTENTION), None)
    if attention is not None and attention.top != lead.top:
        words += (
            f" AB-MIL attention puts most weight on {html.escape(attention.top)}, which is not the magnification the "
            "score depends on: attention shares follow how many tokens each level has, not what the model uses."
        )
        if token_fraction is not None:
            shares = ", ".join(
                f"{html.escape(n)} {100 * f:.0f}%" for n, f in zip(attention.level_names, token_fraction)
            )
            words += f" (Token shares: {shares}.)"
    return words


def not_learnt_caveat(metrics: RunMetrics | dict | None) -> str | None:
    """Why no magnification conclusion is drawn, when the model's AUROC is below LEARNT_AUROC; None otherwise."""
    judged = judged_auroc(metrics)
    if judged is not None and judged[1] >= LEARNT_AUROC:
        return None
    where = f"its {judged[0]} AUROC is {judged[1]:.3f}" if judged else "its AUROC is undefined"
    return (
        f"No conclusion about magnifications: {where}, below {LEARNT_AUROC}, so the model has not learnt the task, "
        "and what it attends to says nothing about which magnification carries the signal (the benchmark marks such "
        "rows n/a for the same reason)."
    )


def magnification_section(
    run: Path, config: RunModelRecord | dict, rows: list, metrics: RunMetrics | dict | None = None
) -> list[str]:
    """The panel, or why it is empty: one level only, no positive test slides, or a model at chance
    (`metrics` of the run; below LEARNT_AUROC the panel is one caveat sentence)."""
    e = html.escape
    parts = ["<h2>Which magnification mattered</h2>"]
    model = RunModelRecord.of(config)
    if reads_one_level(str(model.bags), model.region_level):
        return parts + [
            "<p>This model reads one magnification only; there is nothing to attribute between magnifications.</p>"
        ]
    caveat = not_learnt_caveat(metrics) if metrics is not None else None
    if caveat:
        return parts + [f"<p class='caveat'><b>{e(caveat)}</b></p>"]
    slides = positive_test_slides(rows)
    if not slides:
        return parts + ["<p>No positive test slides.</p>"]
    return parts + importance_table(run, slides, "positive test slides")


def importance_table(run: Path, slides: list[str], which: str) -> list[str]:
    """The panel's body over these test slides (`which` names them): each measure's level shares with CIs, the
    verdict and the importance ratios; or why it was not computed."""
    e = html.escape
    parts: list[str] = []
    try:
        importances, note = run_level_importance(run, slides)
    except (MixmagError, OSError, KeyError) as exc:
        return parts + [f"<p><i>Not computed: {e(type(exc).__name__)}: {e(str(exc))}</i></p>"]
    table = summary_rows(importances)
    names = importances[0].level_names
    parts.append(
        f"<p>Over {len(importances)} {e(which)}. Each level's share of the importance (mean over slides, "
        "95% bootstrap CI over slides). Level occlusion: the drop of the slide logit when that level's embeddings "
        "are mean-replaced (or, for tile bags, removed); integrated gradients from the all-levels-mean-replaced "
        "input. Ratio: geometric mean over slides of the top level's share over the least important one's. "
        f"{e(note)}.</p>"
    )
    parts.append(f"<p>{verdict(table, importances[0].token_fraction)}</p>")
    head = "".join(f"<th>{e(n)}</th>" for n in names)
    parts.append(f"<table><tr><th>measure</th>{head}<th>top</th><th>importance ratio (95% CI)</th></tr>")
    for r in table:
        s, ratio = r["summary"], r["ratio"]
        cells = "".join(
            f"<td>{100 * m:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})</td>" for m, lo, hi in zip(s.mean, s.low, s.high)
        )
        ratio_text = (
            f"{ratio.numerator}/{ratio.denominator} {ratio.ratio:.2f} ({ratio.low:.2f}–{ratio.high:.2f})"
            if ratio
            else ""
        )
        top = f"<b>{e(s.top)}</b>" if s.clear else f"{e(s.top)} (not clear)"
        parts.append(f"<tr><td>{e(r['measure'])}</td>{cells}<td>{top}</td><td>{e(ratio_text)}</td></tr>")
    parts.append("</table>")
    return parts


def outcome_magnification_section(run: Path, config: RunModelRecord | dict, metrics: TaskRunMetrics) -> list[str]:
    """The panel for a survival or regression run (one output: the log-risk, the value): over the test slides of the
    high-risk group (survival) or of the specimens predicted above the test median (regression), what raises the
    output; empty of conclusions while the test metric's CI reaches chance (C-index 0.5, Spearman 0). A multiclass run
    gets one row per predicted class (`class_table`), shown once its macro AUROC's CI lies above 0.5."""
    e = html.escape
    parts = ["<h2>Which magnification mattered</h2>"]
    task, primary = metrics.task, metrics.primary
    if task not in ("survival", "regression", "multiclass"):
        return parts + [f"<p>Not drawn for {e(task)} runs (binary runs have their own panel).</p>"]
    model = RunModelRecord.of(config)
    if reads_one_level(str(model.bags), model.region_level):
        return parts + [
            "<p>This model reads one magnification only; there is nothing to attribute between magnifications.</p>"
        ]
    chance = 0.0 if task == "regression" else 0.5
    if not metrics.test.ci95[0] > chance:
        return parts + [
            f"<p class='caveat'><b>No conclusion about magnifications: the test {e(primary)}'s 95% CI reaches "
            f"{chance} (chance), so the model has not shown it learnt the task.</b></p>"
        ]
    rows = TrainRun(run).read_task_rows("test")
    if task == "multiclass":
        return parts + class_table(run, rows)
    if task == "survival":
        chosen, which = [r for r in rows if r.risk_group == "high"], "test slides of the high-risk group"
    else:
        cut = float(np.median([r.score for r in rows]))
        chosen, which = [r for r in rows if r.score > cut], "test slides predicted above the test median"
    pairs = [pair for r in chosen for pair in zip(r.slides, r.slide_scores)]
    slides = [s for s, _ in sorted(pairs, key=lambda p: -p[1])]
    if not slides:
        return parts + [f"<p>No {e(which)}.</p>"]
    return parts + importance_table(run, slides, which)


def class_slides(rows: list[TaskRow]) -> dict[str, list[str]]:
    """Each predicted class's test slides, of the specimens predicted as it, the most confident first (at most
    `PER_CLASS_SLIDES`)."""
    chosen: dict[str, list[tuple[float, str]]] = {}
    for r in rows:
        if r.predicted is not None:
            p = r.probabilities.get(r.predicted, 0.0)
            chosen.setdefault(r.predicted, []).extend((p, s) for s in r.slides)
    return {c: [s for _, s in sorted(v, key=lambda x: -x[0])][:PER_CLASS_SLIDES] for c, v in sorted(chosen.items())}


def class_importances(run: Path, by_class: dict[str, list[str]]) -> tuple[dict[str, list[LevelImportance]], str]:
    """Per predicted class, each of its slides' level occlusion of that class's logit and, where the model's
    instances each belong to one level, its attention per level (one weighting for every class)."""
    everything = [s for slides in by_class.values() for s in slides]
    classifier, used, reference, note = prepared_run(run, everything)
    out: dict[str, list[LevelImportance]] = {}
    for name, slides in by_class.items():
        target = classifier.task.classes.index(name)
        for slide in slides:
            inp = slide_input(classifier, slide, used[slide])
            values = {OCCLUSION: occlusion(inp, reference, target)}
            attention = attention_by_level(inp)
            if attention is not None:
                values[ATTENTION] = attention
            out.setdefault(name, []).append(LevelImportance(slide, float("nan"), list(inp.level_names), values))
    return out, note


def class_table(run: Path, rows: list[TaskRow]) -> list[str]:
    """The multiclass panel: per predicted class, each level's mean share (95% bootstrap CI over its slides) of the
    drop of that class's logit when the level is mean-replaced, and of the attention; or why it was not computed."""
    e = html.escape
    by_class = class_slides(rows)
    if not by_class:
        return ["<p>No test specimen has a predicted class.</p>"]
    try:
        importances, note = class_importances(run, by_class)
    except (MixmagError, OSError, KeyError, ValueError) as exc:
        return [f"<p><i>Not computed: {e(type(exc).__name__)}: {e(str(exc))}</i></p>"]
    names = next(iter(importances.values()))[0].level_names
    parts = [
        f"<p>Per predicted class, over up to {PER_CLASS_SLIDES} test slides of the specimens predicted as it (the "
        "most confident first): each level's share (mean over slides, 95% bootstrap CI over slides) of the drop of "
        "that class's logit when the level's embeddings are mean-replaced, and of the attention where the model "
        f"weighs embeddings of one level each (the same weights for every class). {e(note)}.</p>",
        "<table><tr><th>predicted class</th><th>slides</th><th>measure</th>"
        + "".join(f"<th>{e(n)}</th>" for n in names)
        + "<th>top</th></tr>",
    ]
    for name, slides in importances.items():
        for measure in measures_of(slides):
            s = cohort_summary(slides, measure, n_boot=1000)
            cells = "".join(
                f"<td>{100 * m:.0f}% ({100 * lo:.0f}–{100 * hi:.0f})</td>" for m, lo, hi in zip(s.mean, s.low, s.high)
            )
            top = f"<b>{e(s.top)}</b>" if s.clear else f"{e(s.top)} (not clear)"
            parts.append(f"<tr><td>{e(name)}</td><td>{s.slides}</td><td>{e(measure)}</td>{cells}<td>{top}</td></tr>")
    parts.append("</table>")
    return parts
