"""`mixmag report RUN_DIR`: one self-contained HTML page per training run (opens without network).

Config, cohort summary, metrics with bootstrap CIs, ROC curves with a bootstrap band for tune and
test, the training history, the test predictions, and QC pictures of the test slides when their
tiling folders are known. Every figure is an embedded PNG; every value read from the run's files (metrics, config,
predictions, ids, paths) is escaped where it is written into the page (`mixmag.markup:html_text`).
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path

import numpy as np

from .. import __version__
from ..data.cohort import load_cohort
from ..errors import MixmagError, MixmagWarning, RunError
from ..eval.explain import attribution_summary, explain_slide
from ..fileio import write_atomic
from ..ids import is_safe_id
from ..images import PictureError, read_picture
from ..markup import html_text, html_value, shown_path
from ..runs import (
    RETRAIN,
    CrossValRun,
    EpochRecord,
    PredictionRow,
    RunConfigRecord,
    RunMetrics,
    TaskRunMetrics,
    TrainRun,
)
from ..store import read_header
from ..train.classifier import SlideClassifier
from ..weights_io import UnsafeCheckpointError
from .heatmaps import draw_heatmaps
from .magnification import magnification_section, not_learnt_caveat, outcome_magnification_section
from .outcomes import OUTCOME_FIGURES


class ReportWarning(MixmagWarning):
    """Something the report leaves out, and why (e.g. a QC picture that cannot be read)."""


def _embedded(fig, fmt: str = "png") -> str:
    """A matplotlib figure as a data URI: SVG for line plots (sharp at any zoom), PNG for pictures."""
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


def _file_png(path: Path, longest: int = 480, fmt: str = "png") -> str | None:
    """A picture file as an embedded PNG (or JPEG for photo-like figures), shrunk so a report with
    many slides stays small; a missing one is left out, one that cannot be read (or would decode to more than
    mixmag's pixel budget) is left out with a warning."""
    import cv2

    if not path.is_file():
        return None
    try:
        image = cv2.cvtColor(read_picture(path, what="QC picture"), cv2.COLOR_RGB2BGR)
    except PictureError as exc:
        warnings.warn(str(exc), ReportWarning, stacklevel=2)
        return None
    scale = min(1.0, longest / max(image.shape[:2]))
    if scale < 1:
        image = cv2.resize(
            image, (round(image.shape[1] * scale), round(image.shape[0] * scale)), interpolation=cv2.INTER_AREA
        )
    ok, buf = cv2.imencode(f".{fmt}", image, [cv2.IMWRITE_JPEG_QUALITY, 88] if fmt == "jpeg" else [])
    return f"data:image/{fmt};base64," + base64.b64encode(buf.tobytes()).decode() if ok else None


def roc_with_band(labels: np.ndarray, scores: np.ndarray, n_boot: int = 500, seed: int = 0):
    """ROC curve on a fixed FPR grid, and its 2.5-97.5% bootstrap band (specimens resampled within class)."""
    from sklearn.metrics import roc_curve

    grid = np.linspace(0, 1, 101)

    def tpr_on_grid(y, s):
        fpr, tpr, _ = roc_curve(y, s)
        return np.interp(grid, fpr, tpr)

    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    boots = []
    for _ in range(n_boot):
        idx = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        boots.append(tpr_on_grid(labels[idx], scores[idx]))
    low, high = np.percentile(np.array(boots), [2.5, 97.5], axis=0)
    return grid, tpr_on_grid(labels, scores), low, high


def _read_predictions(run: Path, split: str) -> list[PredictionRow]:
    return TrainRun(run).read_prediction_rows(split)


def _roc_figure(run: Path, metrics: RunMetrics) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 4.2))
    for ax, split in zip(axes, ("tune", "test")):
        rows = _read_predictions(run, split)
        y = np.array([r.label for r in rows])
        s = np.array([r.score for r in rows])
        grid, tpr, low, high = roc_with_band(y, s)
        ax.fill_between(grid, low, high, color="#9ec5e8", alpha=0.6, label="bootstrap 95% band")
        auroc = getattr(metrics, split).auroc
        ax.plot(grid, tpr, color="#1f5a96", lw=2, label=f"AUROC {auroc:.3f}" if isinstance(auroc, float) else None)
        ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
        ax.set_title(f"{split} ({len(rows)} specimens)")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _embedded(fig, "svg")


def _history_figure(history: list[EpochRecord], best_epoch: int) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    epochs = [h.epoch for h in history]
    ax.plot(epochs, [h.tune_auroc for h in history], marker="o", color="#1f5a96", label="tune AUROC")
    ax2 = ax.twinx()
    ax2.plot(epochs, [h.train_loss for h in history], color="#c0504d", label="train loss")
    ax.axvline(best_epoch, color="grey", ls=":", label="chosen")
    ax.set_xlabel("epoch")
    ax.set_ylabel("tune AUROC")
    ax2.set_ylabel("train loss")
    fig.legend(loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    return _embedded(fig, "svg")


def run_store_paths(config: RunConfigRecord, slides: list[str]) -> tuple[dict[str, Path], dict[str, str]]:
    """Where a run's slides' stores are, as training found them: the cohort table's `store` column, else
    <stores>/<slide>.h5; and the slides refused, with why (an id from the run's files that is not a safe name)."""
    known: dict[str, Path] = {}
    try:
        known = load_cohort(config.cohort, config.stores, require_stores=False).stores
    except (MixmagError, OSError):
        pass  # the table moved or changed since training: the stores folder alone
    paths, refused = {}, {}
    for slide in slides:
        if slide in known:
            paths[slide] = known[slide]
        elif is_safe_id(slide):
            paths[slide] = config.stores_folder / f"{slide}.h5"
        else:
            refused[slide] = (
                f"slide id {slide!r} in the run's predictions is not a safe file name; its heatmaps are not drawn"
            )
    return paths, refused


def _qc_pictures(
    run: Path, config: RunConfigRecord, rows: list[PredictionRow], limit: int = 6
) -> list[tuple[str, str]]:
    """QC pictures (tissue and regions) of test slides, found through each store's plan path."""
    slides = [slide for row in rows for slide in row.slides]
    stores, _ = run_store_paths(config, slides)
    out = []
    for slide in slides:
        store = stores.get(slide)
        if store is None or not store.is_file():
            continue
        plan = read_header(store).plan_path
        if not plan:
            continue
        picture = _file_png(Path(plan).parent / "qc_regions.png", fmt="jpeg")
        if picture:
            out.append((slide, picture))
        if len(out) >= limit:
            return out
    return out


def _explained_slides(rows: list[PredictionRow]) -> list[tuple[str, str]]:
    """(slide, why shown): the highest-scoring positive and negative test slides, and the lowest-scoring positive."""
    slides = [(s, r.label, v) for r in rows for s, v in r.slide_pairs()]
    positives = sorted((x for x in slides if x[1] == 1), key=lambda x: -x[2])
    negatives = sorted((x for x in slides if x[1] == 0), key=lambda x: -x[2])
    picked = []
    if positives:
        picked.append((positives[0][0], "highest-scoring positive"))
    if negatives:
        picked.append((negatives[0][0], "highest-scoring negative"))
    if len(positives) > 1:
        picked.append((positives[-1][0], "lowest-scoring positive"))
    return picked


def _heatmaps(
    run: Path, config: RunConfigRecord, rows: list[PredictionRow]
) -> tuple[list[tuple[str, str, dict, list[str]]], str | None]:
    """Heatmap pictures of chosen test slides: [(slide, why, summary, data URIs)], or why there are none."""
    chosen = _explained_slides(rows)
    stores, refused = run_store_paths(config, [slide for slide, _ in chosen])
    chosen = [(slide, why) for slide, why in chosen if slide not in refused]
    out = []
    try:
        classifier = SlideClassifier.load(run)
        classifier.use_stores(stores, Path(config.encoded) if config.encoded else None)
        for slide, why in chosen:
            attribution = explain_slide(classifier, slide, stores[slide])
            pictures = draw_heatmaps(attribution, read_header(stores[slide]), TrainRun(run).heatmaps)
            out.append(
                (
                    slide,
                    why,
                    attribution_summary(attribution),
                    [uri for p in pictures if (uri := _file_png(p, longest=1400, fmt="jpeg")) is not None],
                )
            )
    except UnsafeCheckpointError:
        raise  # a tampered run folder is an error, not a missing picture
    except (MixmagError, OSError, KeyError) as exc:
        return out, f"{type(exc).__name__}: {exc}"
    return out, "; ".join(refused.values()) or None


def _heatmap_section(
    run: Path, config: RunConfigRecord, rows: list[PredictionRow], caveat: str | None = None
) -> list[str]:
    e = html_text
    shown, problem = _heatmaps(run, config, rows)
    parts = [
        "<h2>Where the model looked, per magnification</h2>",
        "<p>Per test slide: the attention each region received, and the attention (or gradient x input attribution, "
        "for models pooling whole regions) on the 5x, 10x and 20x tiles, each over the slide; then the most attended "
        "tiles of each magnification. Attention is coloured as its ratio to uniform attention (white = uniform, red "
        "above, blue below); signed attributions around 0 (white = no effect). Each magnification's share is given "
        "beside its share of the tokens, since uniform attention already gives a level its token share "
        "(1.00x = as much as uniform attention).</p>",
    ]
    if caveat:
        parts.append(f"<p class='caveat'><b>Read these maps with care. {e(caveat)}</b></p>")
    for slide, why, summary, pictures in shown:
        enrichment, tokens = summary["level_enrichment"], summary.get("token_fraction", {})
        shares = ", ".join(
            f"{e(k)} {100 * v:.0f}% "
            + (
                f"on {100 * tokens[k]:.0f}% of the tokens ({enrichment[k]:.2f}x uniform)"
                if k in enrichment
                else "(not in its bags)"
            )
            for k, v in summary["level_share"].items()
        )
        parts.append(
            f"<h3>{e(slide)}: {e(why)}, score {summary['score']:.3f}</h3><p>{e(summary['method'])}: {shares}</p>"
        )
        parts += [f"<img alt='heatmaps of {e(slide)}' src='{src}'>" for src in pictures if src]
    if problem:
        parts.append(f"<p><i>Heatmaps not drawn{' for every slide' if shown else ''}: {e(problem)}</i></p>")
    return parts


def _timings_section(timings: dict) -> list[str]:
    """Stage timings: seconds per stage ({stage: s}), or the demo's record ({stage: {seconds, reused, run, runs}}),
    which says when a stage's time comes from an earlier run because this one reused its outputs."""
    e = html_text
    rows, reused = [], False
    for stage, value in timings.items():
        note, seconds = "", value
        if isinstance(value, dict):
            seconds = value.get("seconds")
            if value.get("reused"):
                reused = True
                earlier = value.get("runs", 1) != 1 and value.get("run") != value.get("runs")
                note = (
                    f"reused in this run; time of run {value.get('run')} of {value.get('runs')}, which did the work"
                    if earlier
                    else "reused outputs of an earlier run (its time was not recorded)"
                )
        rows.append(f"<tr><td>{e(stage)}</td><td>{html_value(seconds, '.1f')} s</td><td>{e(note)}</td></tr>")
    intro = (
        "<p>Stages marked reused made nothing new in the run that wrote this report; their times are those of the run "
        "that did the work.</p>"
        if reused
        else ""
    )
    return [
        "<h2>Stage timings</h2>",
        intro,
        "<table><tr><th>stage</th><th>time</th><th>note</th></tr>",
        *rows,
        "</table>",
    ]


def run_title(run: Path, config: RunConfigRecord) -> tuple[str, str, str]:
    """(task, method, seed) of a run: from an experiment grid's <task>/<method>/seed<k> folders, else from the
    cohort table's name and the bags the model reads."""
    seed = str(config.seed)
    if run.name.startswith("seed") and run.parent.parent != run.parent:
        return run.parent.parent.name, run.parent.name, seed
    mixer = f" ({config.mixer_init} mixer, {config.mixer_output})" if config.mixer else ""
    return Path(config.cohort).stem, f"{config.bags}{mixer}", seed


def split_counts(
    config: RunConfigRecord, metrics: RunMetrics, splits: dict, rows: dict[str, list[PredictionRow]]
) -> dict[str, tuple]:
    """(specimens, positive, slides) per split: from the cohort table when it can be read (the train split
    has no predictions to count from), else from the run's own files."""
    try:
        cohort = load_cohort(config.cohort, config.stores, require_stores=False)
        return {
            k: (len(g), sum(sp.label for sp in g), sum(len(sp.slides) for sp in g))
            for k in splits
            for g in [cohort.split(k)]
        }
    except (MixmagError, OSError):
        return {
            k: (
                len(v),
                getattr(metrics, k).positive if k in ("tune", "test") else "",
                sum(len(r.slides) for r in rows.get(k, [])) or "",
            )
            for k, v in splits.items()
        }


def build_reports(run: str | Path, timings: dict | None = None, *, heatmaps: bool = True) -> list[Path]:
    """report.html of a run, or of every fold of a cross-validated folder (its summary is cv.md beside them)."""
    folder = CrossValRun(run)
    if not folder.is_cross_validated():
        return [build_report(run, timings, heatmaps=heatmaps)]
    return [build_report(fold.folder, timings, heatmaps=heatmaps) for fold in folder.fold_runs()]


def build_report(
    run: str | Path, timings: dict | None = None, *, heatmaps: bool = True, notice: str | None = None
) -> Path:
    """RUN/report.html; `notice` is shown first, in bold (the demo's: the data are synthetic)."""
    run = Path(run)
    folder = TrainRun(run)
    if not folder.config.is_file() or not folder.metrics.is_file():
        missing = [f.name for f in (folder.config, folder.metrics) if not f.is_file()]
        raise RunError(f"{run}: not a complete `mixmag train` run folder (no {', '.join(missing)})")
    if folder.task() != "binary":
        return _outcome_report(folder, notice, heatmaps)
    shown, config, record = folder.read_config(), folder.read_config_record(), folder.read_binary_metrics()
    splits = folder.read_splits()
    test_rows = _read_predictions(run, "test")
    e = html_text
    task, method, seed = run_title(run, config)
    title = f"task {task}, method {method}, seed {seed}"
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mixmag report: {e(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f0f3f7}pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}"
        ".qc{display:inline-block;margin:6px;width:320px;vertical-align:top}.qc img{width:100%}</style></head><body>",
        f"<h1>mixmag: {e(title)}</h1>",
        f"<p class='notice' style='background:#fff3cd;padding:0.6em'><b>{e(notice)}</b></p>" if notice else "",
        f"<p>run folder {e(shown_path(run))}</p>",
        f"<p>bags: <b>{e(config.bags)}</b>; chosen epoch {record.best_epoch} (selected on "
        "tune AUROC only); "
        f"mixmag {e(__version__)}</p>",
        "<h2>Metrics</h2><table><tr><th>split</th><th>specimens</th><th>positive</th><th>AUROC</th><th>95% CI "
        "(bootstrap)</th></tr>",
    ]
    for split, m in (("tune", record.tune), ("test", record.test)):
        low, high = m.ci95
        parts.append(
            f"<tr><td>{split}</td><td>{m.specimens}</td><td>{m.positive}</td>"
            f"<td>{html_value(m.auroc, '.3f')}</td>"
            f"<td>{html_value(low, '.3f')} – {html_value(high, '.3f')}</td></tr>"
        )
    parts.append("</table>")
    if splits:
        parts.append("<h2>Cohort</h2><table><tr><th>split</th><th>specimens</th><th>positive</th><th>slides</th></tr>")
        counts = split_counts(config, record, splits, {name: _read_predictions(run, name) for name in ("tune", "test")})
        for k, (specimens, positive, slides) in counts.items():
            parts.append(f"<tr><td>{e(k)}</td><td>{e(specimens)}</td><td>{e(positive)}</td><td>{e(slides)}</td></tr>")
        parts.append("</table>")
    parts.append(f"<h2>ROC curves</h2><img alt='ROC curves' src='{_roc_figure(run, record)}'>")
    if record.history:
        parts.append(
            f"<h2>Training</h2><img alt='training history' src='{_history_figure(record.history, record.best_epoch)}'>"
        )
    parts.append(
        "<h2>Test predictions</h2><table><tr><th>specimen</th><th>label</th><th>score</th><th>slides (scores)</th></tr>"
    )
    for r in sorted(test_rows, key=lambda r: -r.score):
        slides = ", ".join(f"{e(s)} ({v:.6f})" for s, v in r.slide_pairs())
        parts.append(f"<tr><td>{e(r.specimen)}</td><td>{r.label}</td><td>{r.score:.3f}</td><td>{slides}</td></tr>")
    parts.append("</table>")
    qc = _qc_pictures(run, config, test_rows)
    if qc:
        parts.append("<h2>QC: test slides with their regions</h2>")
        parts += [f"<div class='qc'><img alt='QC {e(name)}' src='{src}'><div>{e(name)}</div></div>" for name, src in qc]
    if heatmaps:
        parts += magnification_section(run, config, test_rows, record)
        parts += _heatmap_section(run, config, test_rows, not_learnt_caveat(record))
    if timings:
        parts += _timings_section(timings)
    parts.append(f"<h2>Configuration</h2><pre>{e(json.dumps(shown, indent=1))}</pre></body></html>")
    return write_atomic(folder.report, "\n".join(parts))


def _outcome_report(folder: TrainRun, notice: str | None, heatmaps: bool = True) -> Path:
    """report.html of a multiclass, survival or regression run: its metrics with their intervals, the type's figure
    per split (Kaplan-Meier curves with the log-rank p, the confusion matrix, predicted against true), the test
    predictions and (survival and regression, with `heatmaps`) which magnification mattered."""
    shown, config, metrics = folder.read_config(), folder.read_config_record(), folder.read_metrics_record()
    if not isinstance(metrics, TaskRunMetrics):
        raise RunError(f"{folder.metrics}: a {folder.task()} run's metrics name no task; {RETRAIN}")
    task, primary, e = metrics.task, metrics.primary, html_text
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>mixmag report: {e(folder.folder.name)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
        "th{background:#f0f3f7}pre{background:#f6f6f6;padding:1em;overflow:auto}img{max-width:100%}</style></head><body>",
        f"<h1>mixmag: a {e(task)} run</h1>",
        f"<p class='notice' style='background:#fff3cd;padding:0.6em'><b>{e(notice)}</b></p>" if notice else "",
        f"<p>run folder {e(shown_path(folder.folder))}</p>",
        f"<p>bags: <b>{e(config.bags)}</b>; chosen epoch {e(metrics.best_epoch)} (selected on tune "
        f"{e(primary)} only); mixmag {e(__version__)}</p>",
        f"<h2>Metrics</h2><table><tr><th>split</th><th>specimens</th><th>{e(primary)}</th><th>95% CI (bootstrap)</th>"
        "<th>more</th></tr>",
    ]
    for split, m in (("tune", metrics.tune), ("test", metrics.test)):
        parts.append(
            f"<tr><td>{split}</td><td>{e(m.specimens)}</td><td>{html_value(m.value(primary), '.3f')}</td>"
            f"<td>{html_value(m.ci95[0], '.3f')} – {html_value(m.ci95[1], '.3f')}</td>"
            f"<td>{e(json.dumps(m.others(primary)))}</td></tr>"
        )
    parts.append("</table>")
    for split, m in (("tune", metrics.tune), ("test", metrics.test)):
        figure = OUTCOME_FIGURES[task](folder.read_task_rows(split), m, split)
        parts.append(f"<img alt='{e(task)} {split}' src='{_embedded(figure, 'svg')}'>")
    rows = folder.read_predictions("test")
    columns = list(rows[0]) if rows else []
    parts.append("<h2>Test predictions</h2><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in columns) + "</tr>")
    parts += ["<tr>" + "".join(f"<td>{e(r[c])}</td>" for c in columns) + "</tr>" for r in rows]
    parts.append("</table>")
    if heatmaps:
        parts += outcome_magnification_section(folder.folder, shown, metrics)
    parts.append(f"<h2>Configuration</h2><pre>{e(json.dumps(shown, indent=1))}</pre></body></html>")
    return write_atomic(folder.report, "\n".join(parts))
