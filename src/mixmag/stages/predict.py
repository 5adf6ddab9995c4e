"""`mixmag predict`: new slides -> scores, with the run's own settings.

From raw slides the slides are tiled and embedded exactly as the run's training slides were (its
pipeline.json: tiling parameters, encoder and its weights digest, read mode) into a work folder that
is reused on reruns; from existing stores, the stores are checked against the same record. Each slide
is then scored, its attribution placed on the slide, and heatmaps drawn when asked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..catalog import load_catalog_with_report, place_stores
from ..data.pooled import write_pooled
from ..devices import choose_device
from ..encoders.extract import tiles_per_cell
from ..encoders.model import build_encoder
from ..errors import CohortError, MixmagError, OptionError, RunMismatchError
from ..eval.attribution import OCCLUSION, LevelImportance, cohort_summary, occlusion
from ..eval.explain import explain_slide, save_attribution
from ..eval.level_inputs import occlusion_reference, reads_one_level, slide_input, training_slides
from ..fileio import FolderLock, output_folder, write_csv_atomic
from ..ids import ID_RULE, check_id, is_safe_id, path_for_id
from ..models.aggregators import aggregator_name
from ..report.heatmaps import draw_heatmaps
from ..runs import CrossValRun, PipelineRecord, TrainRun
from ..slides.sources import SlideSource, sources_from_paths, sources_with_rows
from ..slides.tiling import TilingParams, load_plan, plan_path
from ..slides.tissue import load_tissue_model
from ..store import StoreError, StoreHeader, read_header, read_index, read_store, store_path
from ..tables import read_table
from ..train.classifier import SlideClassifier
from .embed import check_read_mode, run_embed
from .encode import encode_stores
from .tile import tile_slides

# track(description, total) opens a progress bar; the step(n=1) it yields counts n units done (the description's first
# word names the unit: slides, tiles)
Tracker = Callable[[str, int], AbstractContextManager[Callable[..., None]]]


@dataclass
class SlideOutcome:
    slide_id: str
    score: float | None = None
    problem: str | None = None
    level_share: dict[str, float] = field(default_factory=dict)
    token_fraction: dict[str, float] = field(default_factory=dict)  # what uniform attention gives each level
    pictures: list[Path] = field(default_factory=list)
    # each level's occlusion (logit drop when its embeddings are replaced by the slide's mean of that level): the
    # measure the benchmark showed to find the right magnification through a mixer, where attention may not
    occlusion: dict[str, float] = field(default_factory=dict)
    probabilities: np.ndarray | None = None  # a multiclass run's class probabilities (score: the top one's)

    @property
    def occlusion_share(self) -> dict[str, float]:
        """Each level's share of the positive occlusion (a level that only lowers the score gets 0)."""
        raising = {k: max(v, 0.0) for k, v in self.occlusion.items()}
        whole = sum(raising.values())
        return {k: (v / whole if whole > 0 else 1 / len(raising)) for k, v in raising.items()}


@dataclass
class PredictInputs:
    """What to score: raw slide files (`sources`) or existing stores, and each slide's specimen."""

    sources: list[SlideSource] = field(default_factory=list)
    stores: dict[str, Path] = field(default_factory=dict)
    specimen_of: dict[str, str] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)  # slides refused before any work, with the reason


def read_inputs(
    slides: list[str] | None, cohort: Path | None, stores_dir: Path | None, mpp: float | None = None
) -> PredictInputs:
    """Slide files or ids from the command line, or a cohort table ('path' for files, 'slide' with
    --stores; optional 'specimen' and 'mpp'); malformed tables and unsafe slide ids are errors naming the input.
    `mpp` (--mpp) is the resolution of slides without (or with wrong) metadata, as for `mixmag tile --mpp`; a table's
    'mpp' column wins over it row by row."""
    if mpp is not None and (stores_dir is not None or not math.isfinite(mpp) or mpp <= 0):
        raise OptionError(
            f"--mpp {mpp}: give a positive number of microns per pixel, and only for slide files (stores already "
            "record their resolution)"
        )
    rows: list[dict] = []
    if cohort is not None:
        table = read_table(cohort)
        rows = table.rows
        if stores_dir is not None and (not rows or any(not r.get("slide") for r in rows)):
            raise CohortError(
                f"{cohort}: needs a 'slide' column filled on every row (slide ids of the stores in --stores)"
            )
    if stores_dir is not None:
        unreadable: dict[str, str] = {}
        if rows:
            ids = [check_id(r["slide"], where=f"{cohort} row {line}") for line, r in zip(table.lines, rows)]
        elif slides:
            ids = [
                check_id(
                    s, where="the command line", fix="Give the ids of stores in --stores (file names without .h5)."
                )
                for s in slides
            ]
        else:  # every store of the folder, by its own slide_id attribute: untrusted, so an unsafe one gets its row
            catalog, report = load_catalog_with_report(stores_dir)
            ids = sorted(e.slide_id for e in catalog.entries)
            unreadable = {Path(rel).stem: f"{stores_dir / rel}: {why}" for rel, why in report.unreadable.items()}
        if not ids and not unreadable:
            raise CohortError(f"{stores_dir}: no stores to predict")
        unsafe = {
            s: f"a store in {stores_dir} names its slide {s!r}, not a safe file name ({ID_RULE}); fix its slide_id "
            "attribute or re-embed the slide"
            for s in ids
            if not is_safe_id(s)
        }
        return PredictInputs(
            stores=place_stores(stores_dir, [s for s in ids if s not in unsafe]),  # flat or sharded folders
            specimen_of={r["slide"]: r.get("specimen") or r["slide"] for r in rows},
            problems=unreadable | unsafe,  # a store the catalog could not read still gets its row
        )
    if cohort is not None:  # slide files, URLs or DICOMweb series; a folder row gives each of its slides its specimen
        named = sources_with_rows(cohort, mpp)
        return PredictInputs(
            [s for s, _row in named], specimen_of={s.slide_id: r.get("specimen") or s.slide_id for s, r in named}
        )
    if slides:
        return PredictInputs(sources_from_paths(list(slides), mpp))  # paths, or URLs (slides.remote)
    raise CohortError("give slide files, --cohort CSV (with a 'path' column) or --stores DIR")


def encoder_for_run(classifier: SlideClassifier, *, weights: Path | None = None, from_hub: bool = False):
    """The run's encoder, refused unless its weights are the ones the training stores were made with."""
    p = classifier.record
    encoder = build_encoder(str(p.encoder), weights=weights, from_hub=from_hub, output=str(p.encoder_output))
    if encoder.weights_digest != p.encoder_weights_digest:
        raise RunMismatchError(
            f"encoder {p.encoder!r}: these weights (digest {encoder.weights_digest}) are not the ones the run was "
            "trained "
            f"with (digest {p.encoder_weights_digest}); pass the same --weights file"
        )
    return encoder


def tissue_model_for_run(classifier: SlideClassifier, path: Path | None = None):
    """The tissue model the run's slides were tiled with (None: the built-in detector): the recorded file, or
    `path`, refused unless its digest is the recorded one."""
    recorded = PipelineRecord.of(classifier.pipeline).tissue_model  # any object with the run's `pipeline` will do
    if recorded is None:
        if path is not None:
            raise RunMismatchError(
                f"{path}: the run's slides were tiled with the built-in tissue detector; drop --tissue-model"
            )
        return None
    if recorded.startswith("callable:"):
        raise RunMismatchError(
            f"the run's slides were tiled with a tissue model given from Python ({recorded}); "
            "tile and embed new slides the same way, then predict with --stores"
        )
    file, _, digest = recorded.rpartition("#")
    candidate = Path(path or file)
    if not candidate.is_file():
        raise RunMismatchError(
            f"the run's slides were tiled with the tissue model {file}, which is not there; pass --tissue-model PATH"
        )
    try:
        model = load_tissue_model(candidate)
    except (ValueError, ImportError, OSError) as exc:
        raise RunMismatchError(f"{candidate}: cannot load the run's tissue model ({exc})") from exc
    if not model.mixmag_id.endswith(f"#{digest}"):
        raise RunMismatchError(f"{candidate}: not the tissue model the run's slides were tiled with (digest {digest})")
    return model


def plan_slides(
    classifier: SlideClassifier,
    sources: list[SlideSource],
    work: Path,
    *,
    tissue_model=None,
    on_tiled: Callable | None = None,
) -> tuple[list[str], dict[str, str]]:
    """Tile the slides with the run's settings: (slides with cells the run can score, problems by slide)."""
    params = TilingParams(**(classifier.record.tiling_params or {}))
    problems: dict[str, str] = {}
    planned = []
    tiles = output_folder(work, "tiles")
    for result in tile_slides(sources, tiles, params, tissue_model=tissue_model, on_result=on_tiled):
        sid = result.source.slide_id
        if result.outcome == "failed":
            problems[sid] = result.error or "tiling failed"
        elif not result.plan.cells or (
            classifier.bag_kind not in ("5x", "10x", "20x", "all") and not result.plan.regions
        ):
            problems[sid] = unscorable(result.plan)
        else:
            planned.append(sid)
    return planned, problems


def planned_tiles(work: Path, planned: list[str]) -> int:
    """Tiles the planned slides' cells hold over every level: the embedding bar's total."""
    total = 0
    for s in planned:
        plan = load_plan(plan_path(work / "tiles", s))
        total += len(plan.cells) * tiles_per_cell(plan.params.n_levels)
    return total


def embed_planned(
    classifier: SlideClassifier,
    planned: list[str],
    work: Path,
    encoder,
    *,
    device: torch.device,
    workers: int = 2,
    on_embedded: Callable | None = None,
    on_batch: Callable[[int], None] | None = None,
) -> tuple[dict[str, Path], dict[str, str]]:
    """Embed the planned slides (stores already made the same way are reused): (stores, problems by slide);
    `on_batch(tiles)` counts tiles as they are embedded."""
    results = run_embed(
        [plan_path(work / "tiles", s) for s in planned],
        output_folder(work, "stores"),
        encoder,
        device=device,
        workers=workers,
        mode=check_read_mode(classifier.record.read_mode or "derive"),
        on_result=on_embedded,
        on_batch=on_batch,
    )
    problems = {r.slide_id: r.error or "embedding failed" for r in results if r.outcome == "failed"}
    stores = {s: store_path(work / "stores", s) for s in planned if s not in problems}
    if classifier.record.pooled_from:  # a run on the 20x-only rival's stores reads pooled coarse levels too
        stores, pooling = pool_stores(stores, output_folder(work, "stores-pooled"))
        problems |= pooling
    return stores, problems


def pool_stores(stores: dict[str, Path], out: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """Each store's pooled twin in `out` (`mixmag.data.pooled:write_pooled`); a store that cannot be pooled is that
    slide's problem, not the batch's."""
    pooled, problems = {}, {}
    for slide, path in stores.items():
        try:
            pooled[slide] = write_pooled(path, out)
        except MixmagError as exc:
            problems[slide] = str(exc)
    return pooled, problems


def unscorable(plan) -> str:
    """Why an empty plan leaves a slide without a score, said for prediction: the run fixes the
    region size and tissue settings, so `mixmag tile`'s advice (change them) does not apply."""
    p = plan.params
    if plan.status == "too_small":
        side = p.region_size * plan.cell_px * plan.slide.mpp
        return (
            f"slide is {plan.slide.width * plan.slide.mpp:.0f} x {plan.slide.height * plan.slide.mpp:.0f} um, smaller "
            "than "
            f"one of the run's {p.region_size} x {p.region_size} regions ({side:.0f} um): this run cannot score it"
        )
    if plan.status == "no_regions":
        return (
            f"tissue found, but no {p.region_size} x {p.region_size} region reaches the run's tissue threshold "
            f"({p.tissue_threshold:.0%}): nothing for this run to score"
        )
    return (
        "no tissue found with the run's tissue settings: check the slide (its QC picture is in the work folder's "
        "tiles/)"
    )


def score_slides(
    classifier: SlideClassifier,
    stores: dict[str, Path],
    work: Path,
    *,
    heatmaps: bool = True,
    top_k: int = 4,
    method: str = "auto",
    occlude: bool = False,
    reference: torch.Tensor | None = None,
    on_slide: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """Score every store (the evaluation path's forward), place its attribution, draw its heatmaps. A store that
    cannot be scored (damaged, forged, made with other settings) gets its reason; the others are scored."""
    if not stores:
        return []
    refused = unusable_stores(classifier, stores)
    usable = {s: p for s, p in stores.items() if s not in refused}
    encoded = None
    if usable and classifier.reads_encoded:  # the run's own mixer makes the new slides' precomputed outputs
        encoded = output_folder(work, "encoded")
        encode_stores(list(usable.values()), classifier.encoded_mixer(), encoded)
    if usable:
        classifier.use_stores(usable, encoded)
    outcomes = []
    maps = output_folder(work, "heatmaps")
    for slide, path in stores.items():
        outcome = SlideOutcome(slide, problem=refused.get(slide))
        if outcome.problem:
            outcomes.append(outcome)
            if on_slide:
                on_slide(outcome)
            continue
        try:
            values = classifier.outputs([slide])[slide]  # binary: probability; survival: log-risk; regression: value
            outcome.score = float(values.max()) if classifier.task.name == "multiclass" else float(values[0])
            outcome.probabilities = values if classifier.task.name == "multiclass" else None
            index = read_index(path)  # one read for the attribution's layout and the occlusion's levels
            attribution = explain_slide(classifier, slide, path, method, index)
            outcome.level_share = attribution.level_share
            outcome.token_fraction = attribution.token_fraction
            if occlude:
                drop = occlusion(slide_input(classifier, slide, path, index), reference)
                outcome.occlusion = dict(zip(attribution.level_names, map(float, drop)))
            save_attribution(attribution, path_for_id(maps, slide, ".npz"))
            if heatmaps:
                try:
                    outcome.pictures = draw_heatmaps(attribution, read_header(path), maps, top_k=top_k)
                except (MixmagError, OSError) as exc:
                    outcome.problem = f"scored, but no heatmap: {exc}"
        except MixmagError as exc:
            outcome.problem = str(exc)
        outcomes.append(outcome)
        if on_slide:
            on_slide(outcome)
    return outcomes


def model_folders(run_dir: Path) -> list[Path]:
    """The run folder, or every fold's run folder of a cross-validated folder (`mixmag train` with `cv:`)."""
    folder = CrossValRun(run_dir)
    return [run.folder for run in folder.fold_runs()] if folder.is_cross_validated() else [Path(run_dir)]


def load_models(run_dir: Path) -> list[SlideClassifier]:
    """The run's model, or every fold's model of a cross-validated folder."""
    return [SlideClassifier.load(folder) for folder in model_folders(run_dir)]


def ensemble_note(models: list[SlideClassifier]) -> str | None:
    """What a cross-validated folder's scores and pictures are (None for a single run)."""
    if len(models) == 1:
        return None
    mean = "class probabilities" if models[0].task.name == "multiclass" else "slide scores"
    return (
        f"scores: ensemble of {len(models)} folds (the mean of the folds' {mean}); attribution, level shares "
        "and heatmaps: fold-0's model"
    )


def ensemble_scores(
    models: list[SlideClassifier], outcomes: list[SlideOutcome], stores: dict[str, Path], work: Path
) -> None:
    """Replace each scored slide's score (the first model's, from `score_slides`) by the mean of every model's score,
    and a multiclass run's class probabilities by the mean of every model's probabilities (its score: the top mean
    probability, its predicted class: that class); the other models read the same stores (and the same precomputed
    mixer outputs, which folds share)."""
    scored = [o for o in outcomes if o.score is not None]
    if len(models) == 1 or not scored:
        return
    usable = {o.slide_id: stores[o.slide_id] for o in scored}
    encoded = output_folder(work, "encoded") if models[0].reads_encoded else None
    if models[0].task.name == "multiclass":
        per_model_probabilities = [{o.slide_id: o.probabilities for o in scored}]
        for model in models[1:]:
            model.use_stores(usable, encoded)
            per_model_probabilities.append(model.outputs(list(usable)))
        for o in scored:
            o.probabilities = np.mean([probabilities[o.slide_id] for probabilities in per_model_probabilities], axis=0)
            o.score = float(o.probabilities.max())
        return
    per_model: list[dict[str, float]] = [{o.slide_id: o.score for o in scored if o.score is not None}]
    for model in models[1:]:
        model.use_stores(usable, encoded)
        per_model.append(model.score(list(usable)))
    for o in scored:
        o.score = float(np.mean([scores[o.slide_id] for scores in per_model]))


def unusable_stores(classifier: SlideClassifier, stores: dict[str, Path]) -> dict[str, str]:
    """The stores this run cannot score, with the reason: so one bad store never stops the batch. Runs on mixer
    outputs encode every store at once, so for them each store is read and validated whole beforehand."""
    refused = {}
    for slide, path in stores.items():
        problem = classifier.store_misfit(path, slide)
        if problem is None and classifier.reads_encoded:
            try:
                read_store(path)
            except StoreError as exc:
                problem = str(exc)
        if problem:
            refused[slide] = problem
    return refused


def write_outcomes(
    path: Path,
    outcomes: list[SlideOutcome],
    specimen_of: dict[str, str] | None,
    levels: list[str],
    how: str = "max",
    model: str | None = None,
) -> Path:
    """predictions CSV: specimen and slide scores (the run's max or mean over a specimen's scored
    slides), each level's share of the attribution beside its share of the tokens (uniform attention's share), and
    why a slide has no score; `model` (a fold ensemble's description) adds a `model` column saying it on every row."""
    specimen_of = specimen_of or {}
    by_specimen: dict[str, list[float]] = {}
    for o in outcomes:
        if o.score is not None:
            by_specimen.setdefault(specimen_of.get(o.slide_id, o.slide_id), []).append(o.score)
    shares, tokens = [f"share_{n}" for n in levels], [f"tokens_{n}" for n in levels]
    occluded = [f"occlusion_{n}" for n in levels] if any(o.occlusion for o in outcomes) else []
    header = ["specimen", "slide", "slide_score", "specimen_score", *shares, *tokens, *occluded, "problem"]
    header += ["model"] if model else []
    rows = []
    for o in outcomes:
        spec = specimen_of.get(o.slide_id, o.slide_id)
        spec_scores = by_specimen.get(spec)
        rows.append(
            [
                spec,
                o.slide_id,
                "" if o.score is None else f"{o.score:.6f}",
                f"{_reduce(spec_scores, how):.6f}" if spec_scores else "",
                *[f"{o.level_share[n]:.4f}" if n in o.level_share else "" for n in levels],
                *[f"{o.token_fraction[n]:.4f}" if n in o.token_fraction else "" for n in levels],
                *[f"{o.occlusion_share[n]:.4f}" if n in o.occlusion else "" for n in (levels if occluded else [])],
                o.problem or "",
                *([model] if model else []),
            ]
        )
    return write_csv_atomic(path, header, rows)


def write_task_columns(
    path: Path, outcomes: list[SlideOutcome], specimen_of: dict[str, str] | None, classifier, run_dir: Path
) -> Path:
    """Add the task type's columns to the predictions CSV: a multiclass run's class probabilities and predicted class
    (the specimen's from the mean of its slides' probabilities); a survival run's risk group (its specimen risk above
    the run's tune median risk: "high", as the run's own predictions)."""
    table = read_table(path)
    rows, header = [dict(r) for r in table.rows], list(table.columns)
    specimen_of = specimen_of or {}
    by_slide = {o.slide_id: o for o in outcomes}
    if classifier.task.name == "multiclass":
        classes = classifier.task.classes
        mean: dict[str, list[np.ndarray]] = {}
        for o in outcomes:
            if o.probabilities is not None:
                mean.setdefault(specimen_of.get(o.slide_id, o.slide_id), []).append(o.probabilities)
        header += [f"p_{c}" for c in classes] + ["predicted", "specimen_predicted"]
        for r in rows:
            probs = by_slide[r["slide"]].probabilities
            spec = mean.get(r["specimen"])
            for k, c in enumerate(classes):
                r[f"p_{c}"] = "" if probs is None else f"{probs[k]:.6f}"
            r["predicted"] = "" if probs is None else classes[int(np.argmax(probs))]
            r["specimen_predicted"] = classes[int(np.argmax(np.mean(spec, axis=0)))] if spec else ""
    elif classifier.task.name == "survival":
        tune = [r for folder in model_folders(run_dir) for r in TrainRun(folder).read_task_rows("tune")]
        cut = float(np.median([r.score for r in tune]))  # a fold ensemble: the folds' tune risks pooled
        header += ["risk_group"]
        for r in rows:
            r["risk_group"] = "" if not r["specimen_score"] else "high" if float(r["specimen_score"]) > cut else "low"
    return write_csv_atomic(path, header, [[r[c] for c in header] for r in rows])


def training_reference(classifier: SlideClassifier, run_dir: Path) -> tuple[torch.Tensor | None, str]:
    """The occlusion reference of a run (each level's mean over up to 32 of its training slides, as its report uses),
    when those stores are still where the run's config says; else each slide's own means."""
    stores, train = training_slides(TrainRun(model_folders(run_dir)[0]).read_config_record())
    found = {s: stores[s] for s in train if s in stores and stores[s].is_file()}
    if not found or classifier.reads_encoded:
        return occlusion_reference(classifier, {})
    classifier.use_stores(found)
    return occlusion_reference(classifier, found)


def occlusion_summary(outcomes: list[SlideOutcome]) -> str | None:
    """Each level's mean occlusion share, with a bootstrap 95% CI, over the slides the model calls positive (score
    >= 0.5: what made them positive), in one line; None with fewer than two such slides."""
    scored = [o for o in outcomes if o.occlusion and o.score is not None and o.score >= 0.5]
    if len(scored) < 2:
        return None
    names = list(scored[0].occlusion)
    slides = [
        LevelImportance(o.slide_id, 0.0, names, {OCCLUSION: np.array([o.occlusion[n] for n in names])}) for o in scored
    ]
    summary = cohort_summary(slides, OCCLUSION)
    parts = [
        f"{n} {m:.2f} [{lo:.2f}, {hi:.2f}]" for n, m, lo, hi in zip(names, summary.mean, summary.low, summary.high)
    ]
    verdict = f"{summary.top} leads clearly" if summary.clear else "no level leads clearly"
    return (
        f"occlusion share over the {summary.slides} slides scored positive (mean [bootstrap 95% CI]): "
        f"{', '.join(parts)}; {verdict}"
    )


def _reduce(values: list[float], how: str) -> float:
    return max(values) if how == "max" else sum(values) / len(values)


def describe_run(classifier: SlideClassifier) -> str:
    p = classifier.record
    line = (
        f"bags {classifier.bag_kind}; encoder {p.encoder} ({p.encoder_output}, weights "
        f"{p.encoder_weights_digest}); "
        f"levels {p.level_mpps} um/px; t = {p.region_size}"
    )
    if classifier.reads_encoded:
        line += f"; mixer {classifier.encoded_mixer()}"
    aggregator = aggregator_name(classifier.model.aggregator)
    return line if aggregator == "abmil" else f"{line}; aggregator {aggregator}"


def precision_note(classifier: SlideClassifier, stores: dict[str, Path]) -> str | None:
    """Stores embedded in another precision than the training stores (bf16 on a GPU vs fp32 on a CPU)
    score slightly differently; said, not refused."""
    trained = classifier.record.compute_dtype
    other = sorted({str(_header_or_empty(p).compute_dtype) for p in stores.values()} - {str(trained), "None"})
    if trained and other:
        return (
            f"the run's stores were embedded in {trained}, these in {', '.join(other)}: scores differ from the same "
            "slides' evaluation scores at that precision's rounding (embed on the same kind of device for identical "
            "scores)"
        )
    return None


def _header_or_empty(path: Path) -> StoreHeader:
    try:
        return read_header(path)
    except (OSError, StoreError):  # absent or unreadable: its own row says so
        return StoreHeader()


@dataclass
class Prediction:
    """What `run` wrote: one outcome per slide (scored, or why not), the levels of the shares, the CSV."""

    outcomes: list[SlideOutcome]
    levels: list[str]
    path: Path
    bag_kind: str
    models: int = 1  # the folds of a cross-validated run, whose mean score is each slide's


def _tile_and_embed(
    classifier: SlideClassifier,
    inputs: PredictInputs,
    work: Path,
    encoder,
    tissue,
    device,
    workers: int,
    track: Tracker,
) -> tuple[dict[str, Path], dict[str, str]]:
    """The raw slides tiled and embedded with the run's settings into `work` (reused on reruns): their stores, and
    why each slide that has none has none."""
    dev = choose_device(device)
    with track("slides tiled", len(inputs.sources)) as step:
        planned, problems = plan_slides(
            classifier, inputs.sources, work, tissue_model=tissue, on_tiled=lambda r: step()
        )
    with track("tiles embedded", planned_tiles(work, planned)) as step:  # a reused store counts at the end
        stores, failed = embed_planned(
            classifier, planned, work, encoder.to(dev), device=dev, workers=workers, on_batch=step
        )
    return stores, problems | failed


@contextmanager
def _no_progress(description: str, total: int) -> Iterator[Callable[..., None]]:
    yield lambda n=1: None


def run(
    run_dir: Path,
    inputs: PredictInputs,
    out: Path,
    work: Path,
    *,
    weights: Path | None = None,
    from_hub: bool = False,
    tissue_model: Path | None = None,
    heatmaps: bool = True,
    top_k: int = 4,
    attribution: str = "auto",
    device: str | None = None,
    workers: int = 2,
    on_run: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    track: Tracker = _no_progress,
) -> Prediction:
    """`mixmag predict`: load the run, tile and embed raw slides with its settings (into `work`, reused on reruns),
    score and explain every slide, and write the predictions CSV `out`. A slide that cannot be scored gets its
    reason in the CSV; the other slides go on."""
    if attribution not in ("auto", "attention", "gradient", "occlusion"):
        raise MixmagError(f"--attribution {attribution!r}: use auto, attention, gradient or occlusion")
    models = load_models(run_dir)
    classifier = models[0]
    # occlusion shares wherever the model reads several magnifications (the measure proven on known answers), or
    # when asked; the maps stay attention (or gradient): occlusion gives one number per level, not per tile
    occlude = attribution == "occlusion" or (
        attribution == "auto" and not reads_one_level(classifier.bag_kind, classifier.region_level)
    )
    method = "auto" if attribution == "occlusion" else attribution
    if on_run:
        on_run(describe_run(classifier))
    note = ensemble_note(models)
    if note and on_note:
        on_note(note)
    with FolderLock(work, "mixmag predict"):  # two predicts sharing a work folder would overwrite each other
        stores, problems = inputs.stores, dict(inputs.problems)
        if inputs.sources:
            encoder = encoder_for_run(classifier, weights=weights, from_hub=from_hub)
            tissue = tissue_model_for_run(classifier, tissue_model)
            stores, problems = _tile_and_embed(classifier, inputs, work, encoder, tissue, device, workers, track)
        note = precision_note(classifier, stores)
        if note and on_note:
            on_note(note)
        outcomes = []
        reference = None
        if stores and occlude:
            reference, ref_note = training_reference(classifier, run_dir)
            if on_note:
                on_note(f"occlusion {ref_note}")
        if stores:
            with track("slides scored and explained", len(stores)) as step:
                outcomes = score_slides(
                    classifier,
                    stores,
                    work,
                    heatmaps=heatmaps,
                    top_k=top_k,
                    method=method,
                    occlude=occlude,
                    reference=reference,
                    on_slide=lambda o: step(),
                )
            ensemble_scores(models, outcomes, stores, work)
        outcomes += [SlideOutcome(s, problem=p) for s, p in problems.items()]
        levels = list(next((o.level_share for o in outcomes if o.level_share), {}))
        model = f"ensemble of {len(models)} folds" if len(models) > 1 else None
        how = classifier.specimen_score if classifier.task.name == "binary" else "mean"  # the others: the mean
        path = write_outcomes(out, outcomes, inputs.specimen_of, levels, how, model)
        if classifier.task.name != "binary":
            write_task_columns(path, outcomes, inputs.specimen_of, classifier, run_dir)
        return Prediction(outcomes, levels, path, classifier.bag_kind, len(models))
