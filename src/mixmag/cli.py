"""The `mixmag` command line: thin wrappers over the Python API, one sub-command per stage.

One error boundary: every failure a user can fix is a `MixmagError` (errors name the input and the fix), caught once,
by the app's command group, and printed as one `error:` line with exit code 2. The only other exception caught here is
an OSError that says an output cannot be written (read-only, full, a file in the way): the same sentence the writers
give (`fileio.output_error`), as a net under any writer that did not convert it itself.
"""

from __future__ import annotations

import io
import json
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.progress import Progress
from rich.table import Table
from rich.text import Text
from typer.core import TyperGroup

from . import __version__
from .config import model_default
from .errors import MixmagError, MixmagWarning, OptionError
from .fileio import is_unwritable, output_error, read_json_limited, read_text_limited
from .markup import labelled, plain_console
from .slides.params import TilingParams, TissueParams
from .stages.progress import work_progress
from .threads import configure_threads, load_note

THREADS_NOTE = configure_threads()  # before anything imports torch: its OpenMP pool reads these once, when it starts
HEAVY_COMMANDS = {"embed", "pretrain", "train", "experiment", "predict", "encode", "demo", "benchmark"}


class _ErrorBoundary(TyperGroup):
    """The one place where mixmag's errors are caught (for `main()`, `python -m`, torchrun and tests alike)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MixmagError as exc:
            _fail(str(exc))
        except OSError as exc:  # the net under every writer: a read-only disk, a full one, a file in the way
            if not is_unwritable(exc):
                raise
            _fail(str(output_error(exc.filename or "an output", exc)))


def _commands(help: str, **kwargs) -> typer.Typer:
    """A command group whose help is plain text: rich markup would read `[cuda when available]` or `<folder>[/<any>]`
    in an option's help as tags, dropping or refusing them (`mixmag.markup`)."""
    return typer.Typer(
        no_args_is_help=True, rich_markup_mode=None, context_settings={"max_content_width": 120}, help=help, **kwargs
    )


app = _commands(
    "Mixed-magnification region embeddings for computational pathology.", cls=_ErrorBoundary, add_completion=False
)
bench_app = _commands("Benchmarks that print their figures.")
synth_app = _commands("Generate synthetic slides.")
app.add_typer(bench_app, name="bench")
app.add_typer(synth_app, name="synth")
console = plain_console()  # markup is never parsed: paths and messages print as they are (`mixmag.markup`)
err_console = plain_console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        console.print(f"mixmag {__version__}", highlight=False)
        raise typer.Exit(0)


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="Print mixmag's version and exit."),
    ] = False,
) -> None:
    """mixmag's own warnings print as one plain line; Python's and libraries' ones as before."""
    python_show = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if issubclass(category, MixmagWarning):
            err_console.print(labelled("warning:", "bold yellow", str(message)), soft_wrap=True)
        else:
            python_show(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    if ctx.invoked_subcommand in HEAVY_COMMANDS:  # said once, where threads decide the time a command takes
        for note in (THREADS_NOTE, load_note()):
            if note:
                err_console.print(note, style="dim", soft_wrap=True)
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8 prints escaped instead of crashing
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")


def _fail(message: str, code: int = 2) -> NoReturn:
    err_console.print(labelled("error:", "bold red", message), soft_wrap=True)
    raise typer.Exit(code)


def _tiling_params(config: Path | None, options: dict):
    """Settings from an optional YAML file (a `tiling:` section or the whole file), then flags."""
    from .config import load_config
    from .slides.params import TilingParams

    return load_config(TilingParams, config, section="tiling", options=options)


def _tiling_help(text: str, name: str, section: str | None = None) -> str:
    """Help text with the default read from the tiling model (written once, there)."""
    model = TissueParams if section == "tissue" else TilingParams
    return f"{text} [{model_default(model, name)}]."


_CACHE_OPTION = typer.Option(
    "--cache",
    envvar="MIXMAG_SLIDE_CACHE",
    help="Download slides given by URL into this folder before reading them (needed for formats OpenSlide reads); "
    "without it, URLs are read by range requests.",
)


@contextmanager
def _slide_cache(folder: Path | None) -> Iterator[None]:
    """The slide cache is an environment setting, so the embedding's DataLoader workers see it too; set for the
    command's work and restored after (a caller that runs commands in its own process keeps its environment)."""
    if folder is None:
        yield
        return
    before = os.environ.get("MIXMAG_SLIDE_CACHE")
    os.environ["MIXMAG_SLIDE_CACHE"] = str(folder.resolve())
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MIXMAG_SLIDE_CACHE", None)
        else:
            os.environ["MIXMAG_SLIDE_CACHE"] = before


# `mixmag tile`'s options, named here so that the command reads as the list of what it takes
_TileSlides = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Slide files (SVS, TIFF, OME-TIFF, NDPI, MRXS, DICOM...) or folders of them; or URLs: s3://, gs://, "
        "az://, https:// (read by range requests) and dicomweb+http(s)://.../studies/UID/series/UID."
    ),
]
_TileCohort = Annotated[Optional[Path], typer.Option(help="CSV with a 'path' column (optional 'slide' id and 'mpp').")]
_TileRegionSize = Annotated[Optional[int], typer.Option(help=_tiling_help("t: region side in cells", "region_size"))]
_TileRegionStride = Annotated[
    Optional[int], typer.Option(help="Step between regions in cells [t, no overlap]; 1 for all positions.")
]
_TileContextSize = Annotated[Optional[int], typer.Option(help="c: also accept c x c context windows (CMEM).")]
_TileNLevels = Annotated[
    Optional[int], typer.Option("--levels", help=_tiling_help("l: magnification levels, 2x apart", "n_levels"))
]
_TileBaseMpp = Annotated[
    Optional[float], typer.Option(help=_tiling_help("um/px of the coarsest level (2.0 = 5x)", "base_mpp"))
]
_TileTilePx = Annotated[Optional[int], typer.Option(help=_tiling_help("Tile side in pixels", "tile_px"))]
_TileTissueThreshold = Annotated[
    Optional[float], typer.Option(help=_tiling_help("Minimum tissue fraction of a region", "tissue_threshold"))
]
_TileThumbnailMpp = Annotated[
    Optional[float], typer.Option(help=_tiling_help("um/px of the tissue thumbnail", "thumbnail_mpp", "tissue"))
]
_TileMinSaturation = Annotated[
    Optional[int],
    typer.Option(help=_tiling_help("Floor on the Otsu saturation threshold", "min_saturation", "tissue")),
]
_TileAllowUpsample = Annotated[
    Optional[bool], typer.Option("--allow-upsample", help="Allow levels finer than the scan.")
]
_TileResampleTolerance = Annotated[
    Optional[float],
    typer.Option(
        help=_tiling_help(
            "Read a slide level this close to a target mpp (relative, e.g. 0.01) as it is, without resampling; "
            "the real mpp is recorded in the store",
            "resample_tolerance",
        )
    ),
]
_TileBackend = Annotated[
    str, typer.Option(help="auto, tiffslide, openslide, omezarr, czi, slideio or dicomweb (see `mixmag doctor`).")
]
_TileTissueModel = Annotated[Optional[Path], typer.Option(help="ONNX or TorchScript tissue model (probability map).")]
_TileAnnotations = Annotated[
    Optional[Path],
    typer.Option(
        help="QuPath GeoJSON: one file (one slide), or a folder of <slide>.geojson; tile inside the annotations."
    ),
]
_TileAnnotationInclude = Annotated[
    Optional[list[str]],
    typer.Option(help="Annotation classes that tile (repeat; patterns like 'Tumor*') [every class]."),
]
_TileAnnotationExclude = Annotated[
    Optional[list[str]],
    typer.Option(help="Annotation classes cut out (repeat) [Pen, Artifact, Artefact, Ignore*, Background, ...]."),
]
_TileAnnotationMode = Annotated[
    str, typer.Option(help="restrict: tissue inside the annotations; replace: the annotations are the tissue.")
]


@app.command()
def tile(
    slides: _TileSlides = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder: one sub-folder per slide.")] = Path("tiles"),
    cohort: _TileCohort = None,
    config: Annotated[Optional[Path], typer.Option(help="YAML with tiling settings (flags override it).")] = None,
    mpp: Annotated[Optional[float], typer.Option(help="Override the slides' microns per pixel.")] = None,
    region_size: _TileRegionSize = None,
    region_stride: _TileRegionStride = None,
    context_size: _TileContextSize = None,
    n_levels: _TileNLevels = None,
    base_mpp: _TileBaseMpp = None,
    tile_px: _TileTilePx = None,
    tissue_threshold: _TileTissueThreshold = None,
    thumbnail_mpp: _TileThumbnailMpp = None,
    min_saturation: _TileMinSaturation = None,
    allow_upsample: _TileAllowUpsample = None,
    resample_tolerance: _TileResampleTolerance = None,
    backend: _TileBackend = "auto",
    tissue_model: _TileTissueModel = None,
    force: Annotated[bool, typer.Option(help="Re-tile even when a current plan exists.")] = False,
    annotations: _TileAnnotations = None,
    annotation_include: _TileAnnotationInclude = None,
    annotation_exclude: _TileAnnotationExclude = None,
    annotation_mode: _TileAnnotationMode = "restrict",
    cache: Annotated[Optional[Path], _CACHE_OPTION] = None,
    shard: Annotated[Optional[str], typer.Option(help=SHARD_HELP)] = None,
    claim_timeout: Annotated[float, typer.Option(min=1.0, help=CLAIM_TIMEOUT_HELP)] = 600.0,
) -> None:
    """Find tissue and cut aligned multi-magnification regions; write a tiling plan and QC pictures per slide."""
    from .slides.tissue import load_tissue_model
    from .stages.tile import check_backend, describe_tiling, tile_slides, tile_sources
    from .workers import Worker, resolve_shard

    params = _tiling_params(
        config,
        dict(
            region_size=region_size,
            region_stride=region_stride,
            context_size=context_size,
            n_levels=n_levels,
            base_mpp=base_mpp,
            tile_px=tile_px,
            tissue_threshold=tissue_threshold,
            allow_upsample=allow_upsample,
            resample_tolerance=resample_tolerance,
            tissue=dict(thumbnail_mpp=thumbnail_mpp, min_saturation=min_saturation),
        ),
    )
    check_backend(backend)
    sources = tile_sources(list(slides or []), cohort, mpp)  # refuses a call with neither slides nor --cohort
    model = load_tissue_model(tissue_model) if tissue_model else None
    drawn = _annotation_source(annotations, annotation_include, annotation_exclude, annotation_mode, len(sources))
    worker = Worker(resolve_shard(shard))
    mine = len(sources[worker.slot :: worker.slots])
    console.print(describe_tiling(_share(mine, len(sources), worker), params, out))
    with _progress() as progress:
        task = progress.add_task("tiling", total=mine, unit="slides")

        def report(result) -> None:
            _print_tile_result(progress, result)
            progress.advance(task)

        with _slide_cache(cache):
            results = tile_slides(
                sources,
                out,
                params,
                backend=backend,
                tissue_model=model,
                force=force,
                worker=worker,
                claim_timeout=claim_timeout,
                on_result=report,
                on_takeover=_say_takeover(progress.console),
                annotations=drawn,
            )
    _print_tile_summary(results, out)
    if any(r.outcome == "failed" for r in results):
        raise typer.Exit(1)


def _annotation_source(path, include, exclude, mode: str, n_slides: int):
    """`mixmag tile`'s annotation options as one AnnotationSource (None without --annotations), checked once."""
    from .interop.annotations import MODES, AnnotationRule, AnnotationSource

    if path is None:
        if include or exclude or mode != "restrict":
            raise OptionError("--annotation-include/-exclude/-mode need --annotations FILE|FOLDER")
        return None
    if mode not in MODES:
        raise OptionError(f"--annotation-mode {mode}: use {' or '.join(MODES)}")
    if Path(path).is_file() and n_slides > 1:
        raise OptionError(
            f"--annotations {path} is one file for {n_slides} slides; pass a folder of <slide>.geojson instead"
        )
    rule = AnnotationRule(mode=mode)
    if include:
        rule = AnnotationRule(include=tuple(include), exclude=rule.exclude, mode=mode)
    if exclude:
        rule = AnnotationRule(include=rule.include, exclude=tuple(exclude), mode=mode)
    return AnnotationSource(Path(path), rule)


SHARD_HELP = (
    "Do shard i of N of the cohort (i from 0), e.g. 0/4; the other shards run anywhere with the same folders. "
    "Under a Slurm job array the array's task id and count are used when --shard is not given."
)
CLAIM_TIMEOUT_HELP = (
    "Seconds without a heartbeat after which another machine's claim on a slide is taken over (a claim of a dead "
    "process on this machine is taken over at once)."
)


def _share(mine: int, total: int, worker) -> str:
    """'12 slide(s)' or '3 of 12 slide(s) (shard 0/4 from --shard)'."""
    if worker.slots == 1:
        return f"{total} slide(s)"
    return f"{mine} of {total} slide(s) ({worker.describe()}, {worker.shard.source or 'torchrun'})"


def _say_takeover(out) -> Callable:
    def said(info) -> None:
        who = info.holder.describe() if info.holder else "an unknown worker"
        out.print(
            f"{info.slide_id}: taking over the claim of {who}: {info.stale}",
            style="yellow",
            soft_wrap=True,
            highlight=False,
        )

    return said


def _print_tile_result(progress: Progress, result) -> None:
    style = {"failed": "red", "skipped": "dim", "tiled": "green"}[result.outcome]
    if result.outcome != "failed" and result.plan is not None and result.plan.warnings:
        style = "yellow"
    progress.console.print(result.summary_line(), style=style, highlight=False, soft_wrap=True)


def _print_embed_result(progress: Progress, result) -> None:
    style = {"failed": "red", "skipped": "dim", "embedded": "green"}[result.outcome]
    problem = f" - {result.error}" if result.error else ""
    line = f"{result.slide_id}: {result.outcome} ({result.cells} cells){problem}"
    progress.console.print(line, style=style, soft_wrap=True, highlight=False)


def _progress() -> Progress:
    """Every long command's bar: done/total, rate, elapsed and time left (`mixmag.stages.progress`)."""
    return work_progress(console)


def _print_tile_summary(results, out: Path) -> None:
    counts = {k: sum(r.outcome == k for r in results) for k in ("tiled", "skipped", "failed")}
    empty = [r for r in results if r.plan is not None and not r.plan.regions]
    console.print(
        f"Done: {counts['tiled']} tiled, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{len(empty)} with an empty plan. Plans and QC pictures in {out}/<slide>/",
        soft_wrap=True,
    )
    problems = [r for r in results if r.outcome == "failed"] + empty
    if problems:
        table = Table(title="Slides that need attention", show_lines=False)
        table.add_column("slide")
        table.add_column("problem")
        for r in problems:
            table.add_row(
                r.source.slide_id, r.error if r.outcome == "failed" else f"{r.plan.status}: {' '.join(r.plan.warnings)}"
            )
        console.print(table)


store_app = _commands("Inspect, validate, export and import per-slide stores.")
app.add_typer(store_app, name="store")


# `mixmag embed`'s encoder options (named here, as tile's are)
_EmbedWeights = Annotated[
    Optional[Path], typer.Option(help="Local weights (.safetensors, .pt, .bin), loaded safely and strictly.")
]
_EmbedFromHub = Annotated[
    bool, typer.Option("--from-hub", help="Download the preset's weights from the Hugging Face hub.")
]
_EmbedRandomInit = Annotated[
    bool,
    typer.Option(
        "--random-init",
        help="Random weights (tests and benchmarks only): drawn from a fixed seed, recorded in each store "
        "(encoder_weights_random).",
    ),
]


@app.command()
def embed(
    plans: Annotated[Path, typer.Option(help="Folder of tiling plans (the --out of `mixmag tile`).")] = Path("tiles"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the per-slide stores (<slide>.h5).")] = Path(
        "stores"
    ),
    cohort: Annotated[
        Optional[Path], typer.Option(help="Only the slides of this CSV ('slide' column, or ids from 'path').")
    ] = None,
    encoder: Annotated[str, typer.Option(help="Encoder preset (see `mixmag encoders list`).")] = "virchow2",
    weights: _EmbedWeights = None,
    from_hub: _EmbedFromHub = False,
    random_init: _EmbedRandomInit = False,
    output: Annotated[Optional[str], typer.Option(help="cls or cls+mean [the preset's default].")] = None,
    batch_cells: Annotated[int, typer.Option(help="Cells per batch (21 tiles each with 3 levels).")] = 8,
    workers: Annotated[int, typer.Option(min=0, max=64, help="DataLoader worker processes per rank.")] = 2,
    device: Annotated[Optional[str], typer.Option(help="cuda, cuda:1, cpu [cuda when available].")] = None,
    compile: Annotated[bool, typer.Option("--compile", help="torch.compile the encoder.")] = False,
    read_mode: Annotated[str, typer.Option(help="derive (read finest level once) or pyramid.")] = "derive",
    force: Annotated[bool, typer.Option(help="Re-embed even when a store is current.")] = False,
    cache: Annotated[Optional[Path], _CACHE_OPTION] = None,
    shard: Annotated[Optional[str], typer.Option(help=SHARD_HELP + " torchrun's ranks split each shard.")] = None,
    claim_timeout: Annotated[float, typer.Option(min=1.0, help=CLAIM_TIMEOUT_HELP)] = 600.0,
) -> None:
    """Embed every tile of every level of every planned cell into one store per slide (torchrun for many GPUs)."""
    from .stages.embed import finish_embed, prepare_embed, run_embed

    run = prepare_embed(
        plans,
        cohort=cohort,
        encoder=encoder,
        weights=weights,
        from_hub=from_hub,
        random_init=random_init,
        output=output,
        device=device,
        compile=compile,
        read_mode=read_mode,
        shard=shard,
    )
    say = console.print if run.dist.rank == 0 else (lambda *a, **k: None)
    say(run.describe(encoder, out), soft_wrap=True, highlight=False)
    if run.note:  # once per run: an encoder trained at 20x only meets 5x and 10x tiles
        say(run.note, style="yellow", soft_wrap=True, highlight=False)
    with _progress() as progress:
        what = f"rank {run.dist.rank} tiles embedded" if run.dist.active else "tiles embedded"
        task = progress.add_task(what, total=None, unit="tiles")
        with _slide_cache(cache):
            results = run_embed(
                run.plans,
                out,
                run.encoder,
                device=run.device,
                cells_per_batch=batch_cells,
                workers=workers,
                mode=read_mode,
                dist=run.dist,
                worker=run.worker,
                force=force,
                claim_timeout=claim_timeout,
                on_start=lambda n: progress.update(task, total=n),
                on_batch=lambda n: progress.advance(task, n),
                on_result=lambda r: _print_embed_result(progress, r),
                on_takeover=_say_takeover(progress.console),
            )
    results = finish_embed(results, run.dist, out)
    counts = {k: sum(r.outcome == k for r in results) for k in ("embedded", "skipped", "failed")}
    say(
        f"Done: {counts['embedded']} embedded, {counts['skipped']} skipped, {counts['failed']} failed. Stores in "
        f"{out}/",
        soft_wrap=True,
    )
    if counts["failed"]:
        raise typer.Exit(1)


@app.command()
def pretrain(
    config: Annotated[Path, typer.Option(help="YAML run config (see configs/pretrain.yaml).")],
    set_: Annotated[
        Optional[list[str]], typer.Option("--set", help="Override a config key: --set steps=500 --set mixer.depth=4.")
    ] = None,
    device: Annotated[Optional[str], typer.Option(help="cuda, cpu [cuda when available].")] = None,
) -> None:
    """Pretrain the region mixer with MEM (or CMEM when `context` is set); resumes from the run folder."""
    from .devices import start_distributed, stop_distributed
    from .train.pretrain import load_config, pretraining_stores, run_pretraining, store_paths

    cfg = load_config(config, set_)
    used, found = len(pretraining_stores(cfg)), len(store_paths(cfg.stores))
    dist, dev = start_distributed(device)
    if dist.rank == 0:
        held_out = f" (the test slides of {', '.join(cfg.exclude_test_of)} left out)" if cfg.exclude_test_of else ""
        console.print(
            f"Pretraining ({'CMEM, c = ' + str(cfg.context) if cfg.context else 'MEM'}, r = {cfg.mask_ratio}, preset "
            f"{cfg.preset}) "
            f"for {cfg.steps} steps of {cfg.batch_size} regions on "
            f"{dev}{f' x {dist.world_size} ranks' if dist.active else ''} -> {cfg.out}; "
            f"{used} of {found} stores{held_out}",
            soft_wrap=True,
        )

    def show(row: dict) -> None:
        cos = " ".join(f"{row[k]:.3f}" for k in sorted(row) if k.startswith("cos_level"))
        base = " ".join(f"{row[k]:.3f}" for k in sorted(row) if k.startswith("baseline_cos_level"))
        extra = f" contrastive {row['contrastive']:.4f}" if "contrastive" in row else ""
        progress.console.print(
            f"step {row['step']:>6}  loss {row['loss']:.4f} (mem {row['mem']:.4f}{extra}; mean-baseline "
            f"{row['baseline_loss']:.4f})  "
            f"cos/level {cos} (baseline {base})  lr {row['lr']:.2e}  {row['samples_per_s']:.0f} samples/s  MFU "
            f"{row['mfu']:.1%}",
            soft_wrap=True,
            highlight=False,
        )

    def resumed(step: int, ckpt: Path) -> None:
        progress.update(task, completed=step)
        progress.console.print(f"Resuming from step {step} of {cfg.steps} ({ckpt})", soft_wrap=True, highlight=False)

    try:
        with _progress() if dist.rank == 0 else nullcontext(Progress(disable=True)) as progress:
            task = progress.add_task("pretraining steps", total=cfg.steps, unit="steps")
            run_pretraining(
                cfg,
                device=dev,
                rank=dist.rank,
                world_size=dist.world_size,
                on_log=show,
                on_resume=resumed,
                on_step=lambda step: progress.update(task, completed=step),
            )
    finally:
        stop_distributed()
    if dist.rank == 0:
        console.print(f"Done. Mixer weights: {cfg.out}/mixer.safetensors; log: {cfg.out}/log.csv")


@app.command()
def encode(
    mixer: Annotated[Path, typer.Option(help="mixer.safetensors of a pretraining run (mixer.json beside it).")],
    stores: Annotated[Path, typer.Option(help="Folder of per-slide stores.")] = Path("stores"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for per-slide patch/cls region embeddings.")] = Path(
        "encoded"
    ),
    device: Annotated[Optional[str], typer.Option(help="cuda or cpu.")] = None,
) -> None:
    """Run the pretrained region mixer over every store: contextualized (patch) and compressed (cls) region embeddings.

    The mixer step, after `mixmag pretrain`; the tile encoder ran earlier, in `mixmag embed`."""
    from .devices import choose_device
    from .stages.encode import encode_stores
    from .train.pretrain import stores_catalog_with_report

    dev = choose_device(device)
    catalog, report = stores_catalog_with_report(stores)  # each unreadable store is named in a warning
    outcomes = {"encoded": 0, "skipped": 0}
    failed = len(report.unreadable)

    def slide_done(slide: str, what: str) -> None:
        outcomes[what] += 1
        console.print(f"{slide}: {what}", soft_wrap=True, highlight=False)

    def slide_failed(path: Path, exc: Exception) -> None:
        nonlocal failed
        failed += 1
        why = str(exc).removeprefix(f"{path}: ")  # most errors name the store already
        err_console.print(f"{path}: left out, {why}", style="red", soft_wrap=True, highlight=False)

    encode_stores(
        catalog.paths(),
        mixer,
        out,
        device=dev,
        on_slide=slide_done,
        settings=catalog.shared_settings(),
        on_failed=slide_failed,
    )
    console.print(
        f"Done: {outcomes['encoded']} encoded, {outcomes['skipped']} skipped (current), {failed} failed (each named "
        f"above). Encoded slides in {out}/",
        soft_wrap=True,
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


@app.command()
def train(
    config: Annotated[Path, typer.Option(help="YAML training config (see configs/mil.yaml).")],
    set_: Annotated[Optional[list[str]], typer.Option("--set", help="Override a config key: --set bags=5x.")] = None,
    device: Annotated[
        Optional[str], typer.Option(help="Where to train: auto (a GPU when there is one), cpu, cuda, cuda:1.")
    ] = None,
) -> None:
    """Train a slide-level AB-MIL model (optionally with a region mixer); select on tune, report test."""
    from .devices import choose_device, describe_device
    from .train.finetune import load_train_config, run_training

    cfg = load_train_config(config, set_)
    dev = choose_device(device)
    err_console.print(describe_device(dev, device), style="dim")
    if cfg.cv is not None:
        _cross_validate(cfg, dev)
        return
    console.print(
        f"Training AB-MIL on {cfg.bags} "
        f"bags{' with a ' + cfg.mixer.init + ' mixer (' + cfg.mixer.output + ')' if cfg.mixer else ''} -> {cfg.out}",
        soft_wrap=True,
    )
    with _progress() as progress:
        task = progress.add_task("training epochs", total=cfg.epochs, unit="epochs")

        def epoch_done(h: dict) -> None:
            progress.console.print(f"epoch {h['epoch']:>3}  train loss {h['train_loss']:.4f}  {_tune_text(h)}")
            progress.update(task, completed=h["epoch"])

        metrics = run_training(cfg, on_epoch=epoch_done, device=dev)
    _print_metrics(metrics)


def _cross_validate(cfg, dev) -> None:
    """`mixmag train` with a `cv:` section: every fold's run, then the summary (cv.md) printed."""
    from .runs import metrics_record
    from .stages.crossval import METRIC_NAMES, run_cross_validation

    console.print(
        f"Cross-validating AB-MIL on {cfg.bags} bags: {cfg.cv.folds} folds -> {cfg.out}/fold-<i>/", soft_wrap=True
    )
    with _progress() as progress:
        task = progress.add_task("training epochs", total=cfg.cv.folds * cfg.epochs, unit="epochs")

        def fold_done(index: int, metrics: dict, reused: bool) -> None:
            record = metrics_record(metrics)
            done = "reused (finished before)" if reused else "trained"
            value, name = record.test.value(record.primary), METRIC_NAMES.get(record.primary, record.primary)
            progress.console.print(f"fold {index}: {done}; test {name} {value:.3f}")
            progress.update(task, completed=(index + 1) * cfg.epochs)

        run_cross_validation(
            cfg,
            on_fold=fold_done,
            on_epoch=lambda h: progress.update(task, advance=1),
            on_note=lambda note: console.print(f"note: {note}", style="yellow", soft_wrap=True, highlight=False),
            device=dev,
        )
    _print_cross_validation(Path(cfg.out))


def _print_cross_validation(folder: Path) -> None:
    from .runs import CrossValRun

    run = CrossValRun(folder)
    run.read_summary()  # refuses a folder without a finished summary, in one sentence
    console.print(read_text_limited(run.summary_md, "json", what="cv.md"), highlight=False, soft_wrap=True)


def _tune_text(history_row: dict) -> str:
    """An epoch's tune metric, whichever the run's task type selects on ("undefined" where it was)."""
    from .stages.crossval import METRIC_NAMES

    key = next(k for k in history_row if k.startswith("tune_"))
    value = history_row[key]
    return f"tune {METRIC_NAMES.get(key[5:], key[5:])} {'undefined' if value is None else f'{value:.3f}'}"


def _print_metrics(metrics: dict) -> None:
    """A run's tune and test primary metric (AUROC for binary) with its interval and counts."""
    from .runs import metrics_record
    from .stages.crossval import METRIC_NAMES

    record = metrics_record(metrics)
    metric = METRIC_NAMES.get(record.primary, record.primary)
    for name, m in (("tune", record.tune), ("test", record.test)):
        counted = m.counted()
        counts = f", {counted[0]} {counted[1]}" if counted else ""
        console.print(
            f"{name}: {metric} {m.value(record.primary):.3f} (95% CI {m.ci95[0]:.3f}-{m.ci95[1]:.3f}; {m.specimens} "
            f"specimens{counts})"
        )
        uno = m.uno()
        if uno is not None:  # survival: the censoring-weighted C-index beside Harrell's
            console.print(f"{name}: Uno's C-index {uno[0]:.3f} (95% CI {uno[1]:.3f}-{uno[2]:.3f})")
    console.print(f"chosen epoch {record.best_epoch} (on tune {metric})")


@app.command()
def evaluate(run: Annotated[Path, typer.Argument(help="A run folder of `mixmag train`.")]) -> None:
    """Print a run's specimen-level AUROC with bootstrap 95% CIs (from its saved predictions); for a cross-validated
    folder, its summary (cv.md)."""
    from .eval.runs import evaluate_run
    from .runs import CrossValRun

    if CrossValRun(run).is_cross_validated():
        _print_cross_validation(run)
        return
    _print_metrics(evaluate_run(run))


@app.command()
def compare(
    run_a: Annotated[Path, typer.Argument(help="First run folder.")],
    run_b: Annotated[Path, typer.Argument(help="Second run folder.")],
    split: Annotated[str, typer.Option(help="tune or test.")] = "test",
) -> None:
    """Paired DeLong test between two binary runs on the same specimens (other task types: a paired bootstrap of the
    primary metric's difference)."""
    from .eval.runs import compare_runs, compare_task_runs, run_task
    from .stages.crossval import METRIC_NAMES

    if run_task(run_a).name != "binary":
        c = compare_task_runs(run_a, run_b, split)
        console.print(
            f"{split}: {METRIC_NAMES.get(c.metric, c.metric)} {c.value_a:.3f} vs {c.value_b:.3f}, difference "
            f"{c.paired.difference:+.3f} (95% CI {c.paired.low:+.3f} to {c.paired.high:+.3f}), p = "
            f"{c.paired.p_value:.4f} (paired bootstrap)"
        )
        return
    r = compare_runs(run_a, run_b, split)
    console.print(
        f"{split}: AUROC {r.auc_a:.3f} vs {r.auc_b:.3f}, difference {r.difference:+.3f} (SE {r.std_error:.3f}), z = "
        f"{r.z:.2f}, p = {r.p_value:.4f} (paired DeLong)"
    )


@app.command()
def experiment(
    grid: Annotated[Path, typer.Argument(help="Grid YAML: tasks, methods, seeds, pretrained mixers.")],
) -> None:
    """Run methods x tasks x seeds (each cell cross-validated with `cv:`) and write Table 1/2-style tables, a Fig.
    3-style plot and, with `n_boot`, statistics.md (CIs, paired p and q values against the baseline)."""
    from .stages.crossval import METRIC_NAMES
    from .studies.experiments import load_grid, run_grid
    from .studies.grid_statistics import write_grid_statistics
    from .train.tasks import PRIMARY

    cfg = load_grid(grid)
    metric = {t.name: METRIC_NAMES[PRIMARY[t.type]] for t in cfg.tasks}
    pooled = " (pooled out of fold)" if cfg.cv is not None else ""
    with _progress() as progress:
        task = progress.add_task("training runs", total=len(cfg.tasks) * len(cfg.methods) * len(cfg.seeds), unit="runs")

        def run_done(t: str, m: str, s: int, value: float, status: str) -> None:
            progress.console.print(f"{t} / {m} / seed {s}: test {metric[t]}{pooled} {value:.3f} ({status})")
            progress.advance(task)

        run_grid(cfg, on_run=run_done)
    console.print((Path(cfg.out) / "results.md").read_text(), highlight=False)
    if cfg.n_boot:
        console.print(write_grid_statistics(cfg).read_text(), highlight=False, markup=False)
    statistics = ", statistics.md" if cfg.n_boot else ""
    console.print(f"Tables: {cfg.out}/results.md, results.csv{statistics}; plot: {cfg.out}/differences.png")


@app.command()
def predict(
    run: Annotated[
        Path,
        typer.Option(help="A finished `mixmag train` run folder (a cross-validated one: its folds' ensemble)."),
    ],
    slides: Annotated[
        Optional[list[str]], typer.Argument(help="Slide files; with --stores, slide ids [every store there].")
    ] = None,
    cohort: Annotated[
        Optional[Path],
        typer.Option(help="CSV: 'path' (slide files) or, with --stores, 'slide'; optional 'specimen', 'mpp'."),
    ] = None,
    stores: Annotated[
        Optional[Path], typer.Option(help="Score existing stores (made with the run's settings) instead of raw slides.")
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Predictions CSV.")] = Path("predictions.csv"),
    work: Annotated[
        Optional[Path],
        typer.Option(help="Tiles, stores, heatmaps of the new slides [next to --out: <name>_work/]; reused on reruns."),
    ] = None,
    weights: Annotated[
        Optional[Path], typer.Option(help="The encoder weights the run was trained with (foundation models).")
    ] = None,
    from_hub: Annotated[
        bool, typer.Option("--from-hub", help="Get the encoder weights from the Hugging Face hub.")
    ] = False,
    tissue_model: Annotated[
        Optional[Path], typer.Option(help="The tissue model the run's slides were tiled with, if it moved.")
    ] = None,
    heatmaps: Annotated[
        bool, typer.Option("--heatmaps/--no-heatmaps", help="Draw attention maps per magnification and top tiles.")
    ] = True,
    top_k: Annotated[int, typer.Option(help="Most attended tiles shown per magnification.")] = 4,
    attribution: Annotated[
        str,
        typer.Option(
            help="auto (AB-MIL attention; gradient x input for models weighing whole regions; plus each level's "
            "occlusion share when the model reads several magnifications), attention, gradient or occlusion."
        ),
    ] = "auto",
    device: Annotated[Optional[str], typer.Option(help="cuda, cpu [cuda when available] for embedding.")] = None,
    workers: Annotated[int, typer.Option(min=0, max=64, help="DataLoader workers for embedding.")] = 2,
    mpp: Annotated[
        Optional[float],
        typer.Option(help="Microns per pixel of slides without (or with wrong) metadata, as for `mixmag tile --mpp`."),
    ] = None,
) -> None:
    """Score new slides with a trained run, and show where and at which magnification it looked.

    Raw slides are tiled and embedded with the run's own settings (stores are checked against them); then
    slide and specimen scores, each magnification's share of the attention, and heatmaps over the slide."""
    from .stages import predict as prediction

    inputs = prediction.read_inputs(slides, cohort, stores, mpp)
    work = work or out.with_name(f"{out.stem}_work")
    result = prediction.run(
        run,
        inputs,
        out,
        work,
        weights=weights,
        from_hub=from_hub,
        tissue_model=tissue_model,
        heatmaps=heatmaps,
        top_k=top_k,
        attribution=attribution,
        device=device,
        workers=workers,
        track=_track,
        on_run=lambda line: console.print(f"Run {run}: {line}", soft_wrap=True, highlight=False),
        on_note=lambda note: console.print(f"note: {note}", style="yellow", soft_wrap=True, highlight=False),
    )
    _print_prediction(result, work)
    if any(o.score is None for o in result.outcomes):
        raise typer.Exit(1)


@contextmanager
def _track(description: str, total: int) -> Iterator[Callable[..., None]]:
    """A progress bar whose step(n=1) counts work done, in the unit the description's first word names; it ends full
    (a slide that failed tiling, or a store that was reused, has nothing left to count)."""
    with _progress() as progress:
        task = progress.add_task(description, total=total, unit=description.split()[0])
        yield lambda n=1: progress.advance(task, n)
        progress.update(task, completed=total)


def _print_prediction(result, work: Path) -> None:
    """The scores table, the occlusion summary and where the files are."""
    from .stages.predict import occlusion_summary

    _print_predictions(result.outcomes, result.levels, result.bag_kind)
    summary = occlusion_summary(result.outcomes)
    if summary:
        console.print(summary, soft_wrap=True)
    scores = f" (scores: ensemble of {result.models} folds)" if result.models > 1 else ""
    console.print(f"wrote {result.path}{scores}; tiles, stores and heatmaps in {work}/", soft_wrap=True)


def _print_predictions(outcomes, levels: list[str], bags: str) -> None:
    table = Table(title=f"Predictions ({bags} bags)")
    for col in ("slide", "score", *[f"{n}: share (tokens) -> x uniform" for n in levels], "note"):
        table.add_column(col)
    for o in outcomes:
        table.add_row(
            o.slide_id,
            "" if o.score is None else f"{o.score:.4f}",
            *[_share_cell(o.level_share.get(n), o.token_fraction.get(n)) for n in levels],
            o.problem or "",
        )
    console.print(table)
    console.print(
        "A level's share is read against its share of the tokens: uniform attention gives each level its token "
        "share, so 1.00x means no preference for that magnification.",
        soft_wrap=True,
    )


def _share_cell(share: float | None, tokens: float | None) -> str:
    """'77% (76%) -> 1.01x': a share of the attribution beside the level's share of the bag's tokens."""
    if share is None:
        return ""
    if not tokens:
        return f"{100 * share:.0f}% (not in the bags)"
    return f"{100 * share:.0f}% ({100 * tokens:.0f}%) -> {share / tokens:.2f}x"


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder of `mixmag train`.")],
    timings: Annotated[Optional[Path], typer.Option(help="A timings.json to include (the demo writes one).")] = None,
    heatmaps: Annotated[
        bool,
        typer.Option("--heatmaps/--no-heatmaps", help="Attention heatmaps of chosen test slides (reads the slides)."),
    ] = True,
) -> None:
    """Write RUN/report.html, one self-contained page about a trained run (each fold's, for a cross-validated one).

    Metrics with bootstrap CIs, ROC curves, predictions, QC pictures, heatmaps per magnification, timings, config."""
    from .report.html import build_reports
    from .runs import CrossValRun

    times = read_json_limited(timings, what="timings file") if timings else None
    if times is not None and not isinstance(times, dict):
        raise OptionError(f"--timings {timings}: not a timings file (a JSON object of stage: seconds)")
    for path in build_reports(run, times, heatmaps=heatmaps):
        console.print(f"wrote {path}")
    if CrossValRun(run).is_cross_validated():
        _print_cross_validation(run)


@app.command("plan")
def plan_cmd(
    folder: Annotated[Path, typer.Argument(help="A folder of tiling plans (the --out of `mixmag tile`).")],
    encoder: Annotated[str, typer.Option(help="The encoder preset the stores will be made with.")] = "virchow2",
    output: Annotated[Optional[str], typer.Option(help="cls or cls+mean [the preset's default].")] = None,
    dim: Annotated[Optional[int], typer.Option(min=1, help="Embedding values per tile [the preset's].")] = None,
    tiles_per_second: Annotated[
        Optional[float], typer.Option(min=0.0, help="Embedding rate per GPU [what `mixmag bench embed` measured].")
    ] = None,
    samples_per_second: Annotated[
        Optional[float],
        typer.Option(min=0.0, help="Pretraining regions per second per GPU [what `mixmag bench pretrain` measured]."),
    ] = None,
    pretrain_samples: Annotated[
        int, typer.Option(min=1, help="Regions pretraining will see [the paper's 48,828 steps x 4,096].")
    ] = 48_828 * 4096,
    gpus: Annotated[int, typer.Option(min=1, help="GPUs the work is shared over (times are wall-clock on them).")] = 1,
    bench: Annotated[Path, typer.Option(help="Where `mixmag bench` wrote its results.")] = Path(".mixmag-bench"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the bill as JSON.")] = False,
) -> None:
    """Know the bill before paying it: a tiled cohort's cells, tiles, store bytes and GPU time."""
    from .stages.bill import cohort_bill
    from .stages.embed import find_plans

    bill = cohort_bill(
        find_plans(folder),
        encoder=encoder,
        output=output,
        dim=dim,
        tiles_per_second=tiles_per_second,
        samples_per_second=samples_per_second,
        pretrain_samples=pretrain_samples,
        bench_dir=bench,
    )
    if as_json:
        print(json.dumps(bill.as_json() | {"gpus": gpus}, indent=1))
        return
    _print_bill(bill, gpus)


def _bytes_text(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "bytes" else f"{n:,.2f} {unit}"
        n /= 1000
    return ""


def _hours(seconds: float | None, gpus: int) -> str:
    if seconds is None:
        return "unknown"
    return f"{_duration(seconds)} of GPU time ({_duration(seconds / gpus)} on {gpus} GPU(s))"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:,.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:,.1f} min"
    return f"{seconds / 3600:,.1f} h"


def _print_bill(bill, gpus: int) -> None:
    table = Table(title=f"{bill.slides:,} slide(s): {bill.cells:,} cells, {bill.regions:,} regions")
    table.add_column("what")
    table.add_column("how much", justify="right")
    table.add_column("note")
    for name, tiles in bill.tiles.items():
        table.add_row(f"tiles at {name}", f"{tiles:,}", "")
    table.add_row("tiles in all", f"{bill.total_tiles:,}", "")
    if bill.contexts:
        table.add_row("context windows", f"{bill.contexts:,}", "CMEM")
    table.add_row(
        "stores",
        _bytes_text(bill.store_bytes),
        f"{bill.encoder}, D = {bill.dim}, float16: {_bytes_text(bill.embedding_bytes)} of embeddings; tables, HDF5",
    )
    rate = bill.embed_rate
    table.add_row(
        "embedding",
        _hours(bill.embed_seconds, gpus),
        f"at {rate.value:,.0f} tiles/s ({rate.source})" if rate.value else rate.source,
    )
    rate = bill.pretrain_rate
    epochs = bill.pretrain_samples / bill.regions if bill.regions else 0
    table.add_row(
        "pretraining",
        _hours(bill.pretrain_seconds, gpus),
        f"{bill.pretrain_samples:,} regions ({epochs:,.1f} per region of this cohort)"
        + (f" at {rate.value:,.0f}/s ({rate.source})" if rate.value else f"; {rate.source}"),
    )
    console.print(table)
    for slide, why in bill.unreadable.items():
        console.print(f"{slide}: not counted - {why}", style="red", soft_wrap=True, highlight=False)


@app.command()
def status(
    folder: Annotated[
        Path, typer.Argument(help="An output folder of `mixmag tile` or `mixmag embed` (shared by workers).")
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole summary as JSON.")] = False,
    claim_timeout: Annotated[float, typer.Option(min=1.0, help=CLAIM_TIMEOUT_HELP)] = 600.0,
    show: Annotated[int, typer.Option(min=0, help="Slides listed per state (failed, claimed, pending).")] = 20,
) -> None:
    """Where a cohort stands in an output folder: done, failed (with reasons), claimed (by whom, since), pending."""
    from .slide_state import folder_status

    stages = folder_status(folder, timeout=claim_timeout)
    if not stages:
        raise OptionError(
            f"{folder}: no state records (.mixmag/tile or .mixmag/embed): give the --out folder of "
            "`mixmag tile` or `mixmag embed`"
        )
    if as_json:
        print(json.dumps({"folder": str(folder), "stages": [s.as_json() for s in stages]}, indent=1))
        return
    for stage in stages:
        _print_stage_status(stage, show)


def _print_stage_status(stage, show: int) -> None:
    counts = stage.counts()
    console.print(
        f"{stage.stage}: " + ", ".join(f"{n} {name}" for name, n in counts.items()), soft_wrap=True, highlight=False
    )
    table = Table(show_lines=False, title=f"{stage.stage}: slides that are not done")
    for column in ("slide", "state", "detail"):
        table.add_column(column)
    rows = [(s, "failed", r.reason or r.outcome) for s, r in sorted(stage.failed.items())][:show]
    rows += [(s, "claimed", f"by {c.who()}") for s, c in sorted(stage.claimed.items())][:show]
    rows += [
        (s, "stale claim", f"claimed by {c.who()}; {c.stale}: the next run takes it over")
        for s, c in stage.stale.items()
    ][:show]
    rows += [(s, "unreadable", why) for s, why in sorted(stage.unreadable.items())][:show]
    rows += [(s, "pending", "") for s in stage.pending[:show]]
    for row in rows:
        table.add_row(*row)
    if rows:
        console.print(table)
    hidden = sum(len(x) for x in (stage.failed, stage.claimed, stage.stale, stage.unreadable, stage.pending))
    if hidden > len(rows):
        console.print(f"({hidden - len(rows)} more; --json lists them all)", style="dim")
    if stage.done:
        seconds = [r.seconds for r in stage.done.values() if r.outcome != "skipped"]
        if seconds:
            console.print(
                f"{stage.stage}: {len(seconds)} slide(s) made, {_duration(sum(seconds) / len(seconds))} each on "
                f"average, {_duration(sum(seconds))} of worker time in all",
                highlight=False,
            )


@app.command()
def doctor(
    slides: Annotated[
        Optional[list[str]],
        typer.Argument(help="Slide files, folders (DICOM, OME-Zarr) or URLs; none: only the readers."),
    ] = None,
    mpp: Annotated[Optional[float], typer.Option(help="The mpp override `mixmag tile --mpp` would get.")] = None,
    region_size: Annotated[
        int, typer.Option(min=1, help="The region side in cells `mixmag tile --region-size` would get.")
    ] = TilingParams().region_size,
) -> None:
    """Which slide readers are installed, and per slide which of them read it, at what mpp, how fast, and what
    `mixmag tile` will do (exit 1 when a slide cannot be tiled; a slide too small for a region is said, with the
    region sizes that fit)."""
    from .slides.doctor import check_paths, installed_backends

    table = Table(title="Slide readers")
    for col in ("backend", "installed", "version", "install"):
        table.add_column(col)
    for name, ok, version, install in installed_backends():
        table.add_row(name, "yes" if ok else "no", version, "" if ok else (install or ""))
    console.print(table)
    checks = check_paths(list(slides or []), mpp, region_size=region_size)
    for check in checks:
        _print_slide_check(check)
    if any(not c.can_tile for c in checks):
        raise typer.Exit(1)


def _print_slide_check(check) -> None:
    console.print(
        Text.assemble("\n", (str(check.path), "bold"), f" (slide id {check.slide_id})"), highlight=False, soft_wrap=True
    )
    if not check.backends:
        console.print("  no reader for this kind of path", highlight=False)
    for b in check.backends:
        mark = (
            Text("chosen", "green")
            if b.backend == check.chosen
            else Text.assemble("opens" if b.opened else ("fails", "red"))
        )
        if not b.installed:
            console.print(f"  {b.backend}: not installed ({b.install}) - {b.reason}", highlight=False, soft_wrap=True)
            continue
        console.print(Text.assemble(f"  {b.backend}: ", mark, f" - {b.reason}"), highlight=False, soft_wrap=True)
        if b.error:
            console.print(f"    error: {b.error}", highlight=False, soft_wrap=True)
        if b.levels:
            levels = ", ".join(f"{w}x{h}" + (f" @ {m:.4g}" if m else "") for w, h, m in b.levels)
            console.print(f"    levels (um/px): {levels}", highlight=False, soft_wrap=True)
        if b.mpp is not None:
            console.print(f"    mpp {b.mpp:g} from {b.mpp_source}", highlight=False)
        if b.mpp_error:
            console.print(f"    mpp: {b.mpp_error}", highlight=False, soft_wrap=True)
        if b.tiles_per_s is not None:
            console.print(f"    reads {b.tiles_per_s:.0f} tiles/s (one core, central cells)", highlight=False)
        if b.diff_to_chosen is not None and b.backend != check.chosen:
            console.print(
                f"    pixels vs {check.chosen}: mean |difference| {b.diff_to_chosen:.2f} grey levels", highlight=False
            )
    style = "green" if check.can_tile else "red"
    console.print(f"  {check.verdict}", style=style, highlight=False, soft_wrap=True)
    if check.region_note:
        console.print(f"  but it is {check.region_note}", style="yellow", highlight=False, soft_wrap=True)


encoders_app = _commands("The tile-encoder presets (`mixmag embed --encoder NAME`).")
app.add_typer(encoders_app, name="encoders")


@encoders_app.command("list")
def list_encoders(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per preset, in a list, on stdout.")] = False,
) -> None:
    """List the encoder presets with their model cards' facts: dimension, parameters, input size, the µm/px and
    magnifications they were trained at (? where the card does not say), licence, gating, extra needed."""
    from .encoders.registry import get_preset, preset_facts, preset_names

    rows = [preset_facts(get_preset(name)) for name in preset_names()]
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
        return
    table = Table(title=f"Encoder presets ({len(rows)})")
    columns = ("name", "aliases", "dim", "params", "input px", "trained µm/px", "magnifications", "licence", "gated")
    for col in (*columns, "extra"):
        table.add_column(col, overflow="fold")
    for r in rows:
        mpps, builtin = r["trained_um_per_px"], r["license"] == "built-in"
        table.add_row(
            r["name"],
            ", ".join(r["aliases"]),
            f"{r['dim']} ({r['output']})",
            r["parameters"] or ("built-in" if builtin else "?"),
            str(r["input_px"]),
            "-" if builtin else "?" if mpps is None else (", ".join(f"{m:g}" for m in mpps) or "-"),
            r["magnifications_seen"] or "-",
            r["license"],
            "-" if builtin else {True: "yes", False: "no", None: "?"}[r["gated"]],
            r["extra"] or "-",
        )
    console.print(table)
    console.print(
        "magnifications: what the model saw in training (10 / µm per px; 20× = 0.5 µm/px). An encoder that saw only "
        "20× meets mixmag's 5× and 10× tiles for the first time.",
        soft_wrap=True,
        highlight=False,
    )


@store_app.command("validate")
def store_validate(stores: Annotated[list[Path], typer.Argument(help="Store files (.h5).")]) -> None:
    """Check shapes, dtypes, finite values and provenance, and that the stores share one embedding space
    (encoder, weights, levels, tile and region size); exit 1 if any store is invalid or they do not."""
    from .store import StoreError, read_store, shared_settings

    bad, good = 0, []
    for path in stores:
        try:
            s = read_store(path)
            console.print(
                Text.assemble(
                    (f"{path}: ok", "green"),
                    f" {len(s)} cells, levels {', '.join(f'{k} {v.shape[1]}' for k, v in s.embeddings.items())}, D "
                    f"{s.dim}, encoder {s.header.encoder}",
                ),
                soft_wrap=True,
            )
            good.append(path)
        except StoreError as exc:
            bad += 1
            console.print(str(exc), style="red", soft_wrap=True)
    if len(good) > 1:
        try:
            shared_settings(good)
        except StoreError as exc:
            bad += 1
            console.print(str(exc), style="red", soft_wrap=True, highlight=False)
    if bad:
        raise typer.Exit(1)


@store_app.command("index")
def store_index(
    folder: Annotated[Path, typer.Argument(help="Stores folder (flat, or with stores in nested sub-folders).")],
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Only report stale, missing, new and unreadable stores; write nothing; exit 1 if any."
        ),
    ] = False,
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Ignore the existing catalog and read every store's header.")
    ] = False,
) -> None:
    """Build or repair the folder's store catalog (mixmag-catalog.sqlite): also for stores made elsewhere."""
    from .catalog import CATALOG_NAME, refresh_catalog

    with _progress() as progress:
        task = progress.add_task("stores read", total=None)
        catalog, report = refresh_catalog(
            folder, write=not check, rebuild=rebuild, on_store=lambda i, n: progress.update(task, completed=i, total=n)
        )
    for sentence in report.sentences(folder):
        console.print(sentence, style="yellow", soft_wrap=True, highlight=False)
    kinds = {e.settings for e in catalog.entries}
    what = "checked" if check else "catalogued" if report.unwritten is None else "read (catalog NOT written)"
    console.print(
        f"{len(catalog)} store(s) {what} in {folder / CATALOG_NAME}; {len(kinds)} distinct pipeline setting(s), "
        f"{sum(e.regions for e in catalog.entries):,} regions, {sum(e.contexts for e in catalog.entries):,} contexts",
        soft_wrap=True,
        highlight=False,
    )
    if report.unwritten is not None:
        _fail(f"the catalog was not written: {report.unwritten}")
    if check and (report.changed or report.unreadable):
        raise typer.Exit(1)
    if report.unreadable:
        raise typer.Exit(1)


class PeerFormat(str, Enum):
    trident = "trident"
    clam = "clam"


def _each(items: list, label: str, work) -> int:
    """Run work(item) -> message for every item under a progress bar; a failing item is reported and the rest go
    on. Returns the number of failures."""
    failed = 0
    with _progress() as progress:
        task = progress.add_task(label, total=len(items))
        for item in items:
            try:
                progress.console.print(work(item), soft_wrap=True, highlight=False)
            except MixmagError as exc:
                failed += 1
                progress.console.print(str(exc), style="red", soft_wrap=True, highlight=False)
            progress.advance(task)
    return failed


@store_app.command("export")
def store_export(
    stores: Annotated[list[Path], typer.Argument(help="Store files (.h5).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder (see --format for its layout).")] = Path(
        "exported"
    ),
    format: Annotated[
        PeerFormat,
        typer.Option(
            "--format",
            help="trident: <out>/<mag>x_224px_0px_overlap/features_<encoder>/<slide>.h5; "
            "clam: <out>/<mag>x/h5_files/<slide>.h5 + pt_files/<slide>.pt.",
        ),
    ] = PeerFormat.trident,
    plans: Annotated[
        Optional[Path],
        typer.Option(help="Plans folder the stores were made from [where each store recorded its plan]."),
    ] = None,
    mixer: Annotated[
        Optional[Path],
        typer.Option(
            help="A pretrained mixer (mixer.safetensors or its run folder): export its contextualized tokens at every "
            "level as tile features, and its region CLS as region features, instead of the tile embeddings."
        ),
    ] = None,
    name: Annotated[
        str, typer.Option(help="With --mixer: the feature set's name (TRIDENT's features_<name> folder).")
    ] = "mixmag_mixer",
    device: Annotated[Optional[str], typer.Option(help="With --mixer: cuda or cpu [cuda when available].")] = None,
) -> None:
    """Export stores as TRIDENT or CLAM feature files that those tools' own code reads (one set per magnification);
    with --mixer, the mixer's tokens and region embeddings instead (regions: CLAM <out>/regions/, TRIDENT
    <out>/<mag>x_<t*224>px_0px_overlap/)."""
    from .interop import clam, trident
    from .interop.plans import plan_for_store
    from .store import read_store

    if mixer is not None:
        _export_mixer_tokens(stores, mixer, out, format.value, plans, name, device)
        return

    def export(path: Path) -> str:
        store = read_store(path)
        if format is PeerFormat.trident:
            written = trident.export_store(store, plan_for_store(store, plans), out)
        else:
            written = clam.export_store(store, out)
        return f"{path} -> {', '.join(str(w) for w in written)}"

    if _each(stores, f"export ({format.value})", export):
        raise typer.Exit(1)


@store_app.command("pool")
def store_pool(
    stores: Annotated[list[Path], typer.Argument(help="Store files (.h5).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the pooled stores (not the stores' own).")],
) -> None:
    """The 20x-only rival: new stores whose coarser levels are means of the finest level's tiles (the encoder's own
    5x and 10x features left out), to train the same models on and compare."""
    from .data.pooled import write_pooled

    if _each(stores, "pool from the finest level", lambda p: f"{p} -> {write_pooled(p, out)}"):
        raise typer.Exit(1)


def _export_mixer_tokens(
    stores: list[Path], mixer: Path, out: Path, format: str, plans: Optional[Path], name: str, device: Optional[str]
) -> None:
    from .devices import choose_device
    from .stages.encode import export_mixer_tokens

    failed = 0
    with _progress() as progress:
        task = progress.add_task(f"export mixer tokens ({format})", total=len(stores))
        for path, result in export_mixer_tokens(
            stores, mixer, out, format=format, plans=plans, name=name, device=choose_device(device)
        ):
            if isinstance(result, MixmagError):
                failed += 1
                progress.console.print(str(result), style="red", soft_wrap=True, highlight=False)
            else:
                progress.console.print(
                    f"{path} -> {', '.join(str(w) for w in result)}", soft_wrap=True, highlight=False
                )
            progress.advance(task)
    if failed:
        raise typer.Exit(1)


@store_app.command("coords")
def store_coords(
    plans: Annotated[Path, typer.Option(help="Plans folder of `mixmag tile`.")] = Path("tiles"),
    out: Annotated[
        Path, typer.Option("--out", "-o", help="TRIDENT job folder (--job_dir) to write the coordinates into.")
    ] = Path("trident_job"),
    slide: Annotated[Optional[list[str]], typer.Option(help="Only these slide ids [every plan].")] = None,
    format: Annotated[
        PeerFormat, typer.Option("--format", help="Only trident: patch coordinate files.")
    ] = PeerFormat.trident,
) -> None:
    """Write mixmag's tiles as TRIDENT patch coordinates (<out>/<mag>x_224px_0px_overlap/patches/<slide>_patches.h5),
    so that TRIDENT extracts features with any of its encoders at exactly these tiles."""
    from .interop import trident
    from .interop.plans import plans_in

    if format is not PeerFormat.trident:
        raise OptionError(
            "mixmag writes patch coordinates for TRIDENT only (--format trident); CLAM's feature files can be imported."
        )
    found = plans_in(plans, slide)

    def write(item) -> str:
        path, plan = item
        if not plan.cells:
            return f"{plan.slide.slide_id}: no cells planned ({plan.status}), nothing to extract"
        return f"{plan.slide.slide_id} -> {', '.join(str(w) for w in trident.write_coords(plan, out))}"

    failed = _each(found, "coords", write)
    mags = " ".join(f"{10 / m:g}" for m in found[0][1].levels.mpps) if found else "20"
    console.print(
        f"next, for each magnification M in {mags}: python run_batch_of_slides.py --task feat --job_dir {out} "
        "--wsi_dir SLIDES --patch_encoder ENCODER --mag M --patch_size "
        f"{found[0][1].params.tile_px if found else 224}; "
        f"then `mixmag store import {out} --format trident --plans {plans} --out STORES`",
        soft_wrap=True,
        highlight=False,
    )
    if failed:
        raise typer.Exit(1)


@store_app.command("import")
def store_import(
    folder: Annotated[
        Path, typer.Argument(help="TRIDENT job folder (--format trident) or CLAM feature folder(s) (--format clam).")
    ],
    plans: Annotated[
        Path, typer.Option(help="Plans folder of `mixmag tile`: the tiles every file must hold exactly.")
    ] = Path("tiles"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the stores (<slide>.h5).")] = Path("stores"),
    format: Annotated[
        PeerFormat,
        typer.Option(
            "--format",
            help="trident: <folder>/<mag>x_224px_0px_overlap/features_<encoder>/; clam: <folder>[/<any>]/h5_files/.",
        ),
    ] = PeerFormat.trident,
    slide: Annotated[Optional[list[str]], typer.Option(help="Only these slide ids [every plan].")] = None,
    encoder: Annotated[
        Optional[str], typer.Option(help="Encoder name: picks TRIDENT's features_<encoder>; required for CLAM files.")
    ] = None,
) -> None:
    """Build stores from TRIDENT or CLAM feature files made at mixmag's tiles (`mixmag store coords`, or `mixmag store
    export`): every level present, exactly the plan's tiles, one encoder; refused with the slide, level and reason."""
    from .interop.importing import import_store, plans_without_cells
    from .interop.plans import plans_in

    found = plans_in(plans, slide)

    def rebuild(item) -> str:
        target, store = import_store(folder, item[0], item[1], out, format.value, encoder)
        return f"{target}: {len(store)} cells, D {store.dim}, encoder {store.header.encoder}"

    empty = plans_without_cells(found)
    if empty:
        err_console.print(
            f"{len(empty)} plan(s) with no tissue cells, no store built: {', '.join(empty)} "
            "(if they hold tissue, re-tile them with a lower `mixmag tile --tissue-threshold`)",
            style="yellow",
            soft_wrap=True,
            highlight=False,
        )
    if _each([p for p in found if p[1].cells], f"import ({format.value})", rebuild):
        raise typer.Exit(1)


export_app = _commands("Files for other tools (stores to TRIDENT/CLAM: `mixmag store export`).")
app.add_typer(export_app, name="export")


@export_app.command("qupath")
def export_qupath(
    plans: Annotated[Path, typer.Option(help="Plans folder of `mixmag tile`.")] = Path("tiles"),
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for <slide>.geojson.")] = Path("qupath"),
    attributions: Annotated[
        Optional[Path],
        typer.Option(
            help="heatmaps/ folder of `mixmag predict`'s work folder: adds each "
            "region's attention and per-magnification attribution."
        ),
    ] = None,
    slide: Annotated[Optional[list[str]], typer.Option(help="Only these slide ids [every plan].")] = None,
) -> None:
    """QuPath GeoJSON per slide (in QuPath's frame: OpenSlide bounds applied): tissue as annotations, accepted
    regions as tiles with their tissue fraction, and with --attributions where the model looked; import with
    File > Import objects from file."""
    from .interop import qupath
    from .interop.plans import plans_in

    found = plans_in(plans, slide)
    if _each(found, "qupath", lambda item: f"{qupath.write_slide(item[0], item[1], out, attributions)}"):
        raise typer.Exit(1)


@synth_app.command("slide")
def synth_slide(
    out: Annotated[Path, typer.Argument(help="Output file (.tiff, .svs or .ome.tiff).")],
    width: Annotated[int, typer.Option(help="Level-0 width in pixels.")] = 6000,
    height: Annotated[int, typer.Option(help="Level-0 height in pixels.")] = 5000,
    mpp: Annotated[float, typer.Option(help="Microns per pixel at level 0.")] = 0.5,
    downsamples: Annotated[str, typer.Option(help="Pyramid downsamples, comma separated.")] = "1,4,16",
    flavor: Annotated[str, typer.Option(help="generic, aperio, ome or ome-strips.")] = "generic",
    content: Annotated[str, typer.Option(help="tissue (H&E-like) or position (position code).")] = "tissue",
    seed: Annotated[int, typer.Option()] = 0,
    compression: Annotated[str, typer.Option(help="jpeg, deflate or none.")] = "jpeg",
) -> None:
    """Write a pyramidal synthetic slide with correct resolution metadata, strip by strip (any size, bounded memory)."""
    from .synth.patterns import PositionPattern
    from .synth.slide_writer import PatternSource, write_slide
    from .synth.tissue_field import TissueField

    if content not in ("tissue", "position"):
        raise OptionError(f"unknown content {content!r}; use tissue or position")
    if width < 1 or height < 1 or mpp <= 0:
        raise OptionError(
            f"--width and --height must be at least 1 px and --mpp above 0, got {width}x{height} px at {mpp}"
        )
    extent = (width * mpp, height * mpp)
    pattern = TissueField(*extent, seed=seed) if content == "tissue" else PositionPattern(*extent)
    with _progress() as bar:
        task = bar.add_task(f"writing {out.name}", total=None)
        try:
            path = write_slide(
                out,
                PatternSource(pattern, (width, height), mpp),
                mpp,
                downsamples=[int(d) for d in downsamples.split(",")],
                flavor=flavor,
                compression=compression,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except ValueError as exc:  # the writer's own sentence on sizes and flavours
            raise OptionError(str(exc)) from exc
    console.print(f"wrote {path} ({width}x{height} px at {mpp:g} um/px, {flavor})")


@bench_app.command("tile")
def bench_tile(
    workdir: Annotated[Path, typer.Option(help="Where the generated benchmark slides are kept (reused).")] = Path(
        ".mixmag-bench"
    ),
    size: Annotated[int, typer.Option(help="Side of the generated 40x-style slide in pixels.")] = 8192,
    cells: Annotated[int, typer.Option(help="Cells read per method and round.")] = 16,
    rounds: Annotated[int, typer.Option(help="Rounds; the best round of each method counts.")] = 3,
) -> None:
    """Read the same cells three ways and print tiles/s per core (21 tiles per cell)."""
    from .bench.tile import run_tile_benchmark

    run_tile_benchmark(workdir, size=size, n_cells=cells, rounds=rounds, console=console)


@bench_app.command("env")
def bench_env(
    out: Annotated[Optional[Path], typer.Option(help="Also write the report here as JSON.")] = None,
    expect_under: Annotated[
        Optional[Path], typer.Option(help="Fail unless mixmag is imported from under this folder.")
    ] = None,
) -> None:
    """Check this Python environment before a benchmark: requirements, versions, every module importable."""

    import torch

    from .bench.environment import check_environment
    from .fileio import write_json_atomic

    try:
        report = check_environment(expect_under)
    except MixmagError as exc:
        _fail(str(exc))
    report["threads"] = THREADS_NOTE
    report["load"] = load_note() or "not oversubscribed"
    report["torch_cuda"] = torch.version.cuda
    report["cuda_device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    console.print_json(json.dumps(report))
    if out is not None:
        write_json_atomic(out, report)


@bench_app.command("embed")
def bench_embed(
    workdir: Annotated[Path, typer.Option(help="Where the generated benchmark slide is kept (reused).")] = Path(
        ".mixmag-bench"
    ),
    side: Annotated[int, typer.Option(help="Side of the generated 20x slide in pixels.")] = 6144,
    workers: Annotated[int, typer.Option(min=0, max=64, help="DataLoader workers for the GPU run.")] = 8,
    batch_cells: Annotated[int, typer.Option(help="Cells per batch for the GPU run (21 tiles each).")] = 16,
) -> None:
    """Data path tiles/s per worker on CPU; Virchow2 end to end (bf16, eager and compiled) on a GPU if present."""
    from .bench.embed import run_embed_benchmark

    run_embed_benchmark(workdir, side=side, workers=workers, cells_per_batch=batch_cells, console=console)


@bench_app.command("scale")
def bench_scale(
    workdir: Annotated[
        Path, typer.Option(help="Where the generated stores are kept (reused; ~10 KB per store).")
    ] = Path(".mixmag-bench"),
    n: Annotated[
        Optional[list[int]], typer.Option("--n", help="Store counts (repeat: --n 1000 --n 10000) [1k, 10k, 100k].")
    ] = None,
    cohort: Annotated[int, typer.Option(help="Slides in the cohort loaded out of N.")] = 1000,
    shard: Annotated[int, typer.Option(help="Sub-folder levels by slide-id prefix (0: one flat folder).")] = 1,
    headers_up_to: Annotated[
        Optional[int], typer.Option(help="Above this N, skip what opens every store (catalog build, runs without it).")
    ] = None,
    mil_cohort: Annotated[
        int,
        typer.Option(
            help="Also train on a simulated cohort of this many real-size slides (750 cells, D = 1280): epoch seconds "
            "and peak RSS of AB-MIL 20x / all x and a tiny mixer on regions. Alone (no --n), only this runs.",
            min=0,
        ),
    ] = 0,
    mil_distinct: Annotated[
        int,
        typer.Option(help="Distinct real-size stores (~41 MB each) the cohort's slides are hard links to.", min=1),
    ] = 150,
    mil_device: Annotated[str, typer.Option(help="Where the cohort's epochs train: cpu, cuda, cuda:1.")] = "cpu",
    mil_storage: Annotated[
        Optional[list[str]],
        typer.Option(
            help="Where the stores are read from (repeat): memory (the page cache holds them) and/or disk (each store "
            "dropped from the page cache before it is read, as in a cohort larger than memory) [both]."
        ),
    ] = None,
) -> None:
    """Start-up at corpus scale (catalog build, first pretraining batch, a cohort out of N, peak RSS; with and without
    the catalog), and MIL training on a cohort of real-size slides (--mil-cohort)."""
    from .bench.cohort import STORAGE, run_cohort_benchmark
    from .bench.scale import run_scale_benchmark
    from .devices import choose_device

    if mil_cohort:  # checked before anything is written or run
        unknown = sorted(set(mil_storage or ()) - set(STORAGE))
        if unknown:
            raise typer.BadParameter(f"--mil-storage {', '.join(unknown)}: use {' or '.join(STORAGE)}")
        if mil_cohort < 10:
            raise typer.BadParameter(f"--mil-cohort {mil_cohort}: at least 10 slides (a tenth each for tune and test)")
        choose_device(mil_device)
    if n or not mil_cohort:
        run_scale_benchmark(
            workdir,
            sizes=n or [1000, 10_000, 100_000],
            cohort=cohort,
            shard=shard,
            headers_up_to=headers_up_to,
            console=console,
        )
    if mil_cohort:
        run_cohort_benchmark(
            workdir,
            slides=mil_cohort,
            distinct=min(mil_distinct, mil_cohort),
            storage=tuple(mil_storage or STORAGE),
            device=mil_device,
            console=console,
        )


@bench_app.command("pretrain")
def bench_pretrain(
    workdir: Annotated[Path, typer.Option(help="Where the generated stores are kept (reused).")] = Path(
        ".mixmag-bench"
    ),
    gpu_batch: Annotated[int, typer.Option(help="Batch for the paper preset on a GPU.")] = 1024,
    steps: Annotated[Optional[int], typer.Option(help="Timed steps [20 on GPU, 5 on CPU].")] = None,
    cpu_batch: Annotated[int, typer.Option(help="Batch on CPU.")] = 32,
    cpu_preset: Annotated[str, typer.Option(help="Mixer preset on CPU (paper, small, tiny).")] = "small",
    loader_batches: Annotated[int, typer.Option(help="Batches timed per loader rate.")] = 100,
    profile_below: Annotated[
        float, typer.Option(help="Profile one step when the best MFU is under this (0: never).")
    ] = 0.65,
) -> None:
    """Region loader regions/s per worker; training samples/s, FLOPs/sample and MFU."""
    from .bench.pretrain import run_pretrain_benchmark

    run_pretrain_benchmark(
        workdir,
        console=console,
        gpu_batch=gpu_batch,
        steps=steps,
        cpu_batch=cpu_batch,
        cpu_preset=cpu_preset,
        loader_batches=loader_batches,
        profile_below=profile_below,
    )


@app.command()
def demo(
    config: Annotated[Optional[Path], typer.Option(help="Demo config [configs/demo.yaml].")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", "-o", help="Output folder [the config's `out`].")] = None,
    small: Annotated[bool, typer.Option(help="The small CI configuration (configs/demo-small.yaml).")] = False,
) -> None:
    """The whole method end to end on a built-in synthetic multi-scale cohort, on CPU: table, plot, timings."""
    from .studies.demo import default_config_path, load_demo_config, run_demo

    path = config or default_config_path()
    if small and path is not None:
        path = path.with_name("demo-small.yaml")
    cfg = load_demo_config(path, out)
    raise typer.Exit(run_demo(cfg, console=console))


@app.command()
def benchmark(
    config: Annotated[
        Optional[Path],
        typer.Option(help="Benchmark config (default: the built-in settings, written out in configs/benchmark.yaml)."),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("--out", "-o", help="Output folder (default: the config's `out`).")
    ] = None,
    replicates: Annotated[
        Optional[int],
        typer.Option(
            help="Run R independent replicates (each a fresh cohort, MEM pretraining and training seeds) in "
            "<out>/replicate-<r>/ against an endpoint registered first (endpoint.json): MEM-patch minus AB-MIL 20x "
            "and minus random-patch, task-averaged test AUROC, analysed over replicates. Without --config: the "
            "built-in replicate protocol (configs/replicates.yaml). With --structure-sweep: R replicates at every "
            "knob point (<out>/structure_sweep_replicates.md and .png). With --label-efficiency or --design-space: "
            "that whole study replicated R times, each size's or design point's differences analysed over replicates "
            "(<out>/<study>_replicates.md, .csv, .json, .png)."
        ),
    ] = None,
    design_space: Annotated[
        bool,
        typer.Option(
            "--design-space",
            help="Run the paper's design space instead (MEM r, CMEM c, Random and AB-MIL at every magnification, "
            "patch and CLS, multi-slide specimens): Table 1/2-style tables, a Fig. 3-style figure with CIs and the "
            "departures from the paper's recipe in <out>/design_space.md. --config: a design-space config "
            "(configs/design-space-small.yaml); without: the built-in full grid.",
        ),
    ] = False,
    label_efficiency: Annotated[
        bool,
        typer.Option(
            "--label-efficiency",
            help="Run the label-efficiency sweep instead: an unlabelled pretraining pool several times the labelled "
            "split, and AB-MIL, Random and MEM at each labelled size (<out>/label_efficiency.md and .png). --config: "
            "a label-efficiency config (configs/label-efficiency-small.yaml); without: the built-in sweep.",
        ),
    ] = False,
    structure_sweep: Annotated[
        bool,
        typer.Option(
            "--structure-sweep",
            help="Run the benchmark at each point of the generator's structure knob (0: independent tiles, nothing "
            "for MEM to learn; 1: the default) and report MEM-patch minus random-patch and minus AB-MIL 20x at each, "
            "with paired bootstrap CIs (<out>/structure_sweep.md and .png). --config: a sweep config "
            "(configs/structure-sweep-small.yaml); without: structures 0, 0.5, 1 on the benchmark's defaults.",
        ),
    ] = False,
) -> None:
    """Benchmark v2 on CPU: four synthetic multi-scale tasks at the embedding level, methods x seeds, mean ± sd,
    bootstrap CIs, paired DeLong p against AB-MIL 20x, and the magnification attribution check."""
    from .studies.chosen import run_chosen_study

    if sum([design_space, label_efficiency, structure_sweep]) > 1:
        raise OptionError("--design-space, --label-efficiency and --structure-sweep are separate studies: give one")
    flags = {"structure-sweep": structure_sweep, "design-space": design_space, "label-efficiency": label_efficiency}
    study = next((name for name, given in flags.items() if given), "benchmark")
    try:
        run_chosen_study(study, config, out, replicates, console)
    except MixmagError as exc:
        _fail(str(exc))


@synth_app.command("cohort")
def synth_cohort(
    out: Annotated[Path, typer.Argument(help="Output folder (slides/ and cohort_<task>.csv).")],
    specimens: Annotated[int, typer.Option(help="Number of specimens.")] = 40,
    max_slides: Annotated[int, typer.Option(help="Slides per specimen: 1 to this.")] = 2,
    cells: Annotated[int, typer.Option(help="Slide side in 448 um cells.")] = 6,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Write a synthetic multi-scale cohort: slides plus one cohort table per task (fine, coarse, cross)."""
    from .synth.cohort import CohortSpec, write_cohort

    tables = write_cohort(out, CohortSpec(n_specimens=specimens, max_slides=max_slides, cells=cells, seed=seed))
    console.print("wrote " + ", ".join(str(t) for t in tables.values()))


@synth_app.command("outcomes")
def synth_outcomes(
    out: Annotated[Path, typer.Argument(help="Output folder (stores/ and <task>-<scale>.csv).")],
    task: Annotated[str, typer.Option(help="survival, multiclass or regression.")] = "survival",
    scale: Annotated[str, typer.Option(help="Where the biomarker is: 5x, 10x or 20x (multiclass: all three).")] = "20x",
    specimens: Annotated[int, typer.Option(min=10, max=100_000, help="Number of specimens.")] = 200,
    seed: Annotated[int, typer.Option(min=0)] = 0,
) -> None:
    """Write an embedding-level cohort whose outcome depends on a biomarker at a known scale: a survival time and
    event, one class per scale, or a continuous target (for studies, cross-validation and tests)."""
    from .synth.benchmark import OUTCOME_TASKS, SCALES, OutcomeSpec, write_outcome_cohort

    if task not in OUTCOME_TASKS or scale not in SCALES:
        raise OptionError(f"--task {task} --scale {scale}: use a task of {', '.join(OUTCOME_TASKS)} and a scale of "
                          f"{', '.join(SCALES)}")  # fmt: skip
    table = write_outcome_cohort(out, OutcomeSpec(task, scale=scale, n_specimens=specimens, seed=seed))
    console.print(f"wrote {table} and {out / 'stores'}/", soft_wrap=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
