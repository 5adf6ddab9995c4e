"""Benchmark of start-up at corpus scale: N tiny synthetic stores in a folder sharded by slide-id prefix, and per N the
catalog build time, the time to the first pretraining batch, the time to load a cohort of 1,000 slides out of N and the
peak RSS of each, with the catalog and without it (every header opened, as before the catalog).

Each measurement runs in a fresh process (spawned), so its peak RSS is its own and no file is in Python's caches; the
page cache is warm (the stores were just written), which favours the run without the catalog, if anything.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import resource
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..catalog import (
    CATALOG_NAME,
    catalog_file,
    describe_store,
    load_catalog,
    refresh_catalog,
    scan_stores,
    shared_settings_of,
    write_catalog_file,
)
from ..data.cohort import load_cohort
from ..data.regions import (
    RegionSamplingConfig,
    RegionStream,
    catalog_stores,
    index_stores,
)
from ..fileio import write_atomic, write_json_atomic
from ..markup import plain_console
from ..store import STORE_SUFFIX, shared_settings, write_store
from ..synth.stores import synthetic_store

_ID_LEN = 16
_PLACEHOLDER = ("placeholder" + "_" * _ID_LEN)[:_ID_LEN]  # a safe slide id (stores refuse others), replaced in place
TARGETS = {"first_batch_s_at_100k": 10.0, "rss_growth_mb_per_100k": 200.0}


def slide_id(i: int) -> str:
    return "s" + hashlib.sha1(str(i).encode()).hexdigest()[: _ID_LEN - 1]


def shard_folder(folder: Path, slide: str, levels: int) -> Path:
    """<folder>/<2 chars>/<2 chars>/... by slide-id prefix (after the leading 's'): 256 sub-folders a level."""
    return folder.joinpath(*(slide[1 + 2 * k : 3 + 2 * k] for k in range(levels)))


def make_corpus(folder: Path, n: int, shard: int, console: Console) -> None:
    """N stores of 4 x 4 cells (3 levels, D = 8): one real store written by write_store, then copied with the slide id
    replaced in place (same length), so that 100k stores take a minute rather than an hour of h5py writes."""
    done = folder / "corpus.json"
    if done.is_file() and json.loads(done.read_text()) == {"n": n, "shard": shard}:
        return
    template = write_store(
        folder.parent / f".template-{n}{STORE_SUFFIX}", synthetic_store(_PLACEHOLDER, n_rows=4, n_cols=4, dim=8)
    )
    data = template.read_bytes()
    if data.count(_PLACEHOLDER.encode()) != 1:
        raise RuntimeError("the template store does not hold its slide id exactly once")  # an h5py layout change
    with console.status(Text(f"writing {n:,} stores to {folder}")):
        for i in range(n):
            sid = slide_id(i)
            target = shard_folder(folder, sid, shard) / f"{sid}{STORE_SUFFIX}"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data.replace(_PLACEHOLDER.encode(), sid.encode()))  # bench inputs: no fsync, no rename
    template.unlink()
    write_json_atomic(done, {"n": n, "shard": shard})


def peak_rss_mb() -> float:
    """This process's peak resident set so far (getrusage ru_maxrss, KiB on Linux), MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _first_batch(folder: str, use_catalog: bool) -> dict:
    cfg = RegionSamplingConfig(t=3, per_slide=4, pool=8, batch_size=16)
    start = time.perf_counter()
    if use_catalog:
        catalog = load_catalog(folder)
        catalog.shared_settings()
        entries, _, levels = catalog_stores(catalog, cfg)
    else:
        paths = sorted(Path(folder).rglob(f"*{STORE_SUFFIX}"))
        shared_settings(paths)
        entries, _, levels = index_stores(paths, cfg)
    next(iter(RegionStream(entries, levels, cfg)))
    return {"seconds": time.perf_counter() - start}


def _catalog_build(folder: str, use_catalog: bool) -> dict:
    start = time.perf_counter()
    catalog, _ = refresh_catalog(folder, rebuild=True)
    return {"seconds": time.perf_counter() - start, "stores": len(catalog)}


def _cohort(folder: str, use_catalog: bool, table: str) -> dict:
    start = time.perf_counter()
    if use_catalog:
        cohort = load_cohort(table, folder)
        shared_settings_of(list(cohort.stores.values()), folder)
    else:
        cohort = load_cohort(Path(table).with_suffix(".paths.csv"))
        shared_settings(list(cohort.stores.values()))
    return {"seconds": time.perf_counter() - start, "slides": len(cohort.stores)}


def _measured(what: Callable, args: tuple, queue) -> None:
    base = peak_rss_mb()
    result = what(*args)
    queue.put(result | {"rss_mb": peak_rss_mb(), "rss_growth_mb": peak_rss_mb() - base})


def measure(what: Callable, *args) -> dict:
    """Run what(*args) in a fresh spawned process; its result plus its peak RSS and the growth over its start."""
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_measured, args=(what, args, queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def write_cohort(folder: Path, n: int, size: int, shard: int) -> Path:
    """A cohort table of `size` slides spread over the corpus (by slide id; and a twin naming each store's path)."""
    picks = [slide_id(i) for i in range(0, n, max(1, n // size))][:size]
    splits = ["train", "tune", "test"]
    rows = [(f"p{k}", sid, k % 2, splits[(k // 2) % 3]) for k, sid in enumerate(picks)]
    table = folder.parent / f"cohort-{n}.csv"
    write_atomic(table, "specimen,slide,label,split\n" + "".join(f"{a},{b},{c},{d}\n" for a, b, c, d in rows))
    paths = "".join(f"{a},{b},{c},{d},{shard_folder(folder, b, shard) / (b + STORE_SUFFIX)}\n" for a, b, c, d in rows)
    write_atomic(table.with_suffix(".paths.csv"), "specimen,slide,label,split,store\n" + paths)
    return table


def catalog_from_template(folder: Path) -> None:
    """The catalog of a make_corpus folder without reading every header: every store is the template with its own
    slide id, so one store's entry is repeated with each store's path, id, size and mtime (for N too large to open
    every store on a shared machine; the catalog build time is then not measured)."""
    found = scan_stores(folder).stores
    first = describe_store(folder, next(iter(found)))
    write_catalog_file(
        catalog_file(folder),
        [
            replace(first, path=rel, slide_id=Path(rel).stem, size=size, mtime_ns=mtime)
            for rel, (size, mtime) in sorted(found.items())
        ],
    )


def run_scale_benchmark(
    workdir: Path,
    *,
    sizes: list[int],
    cohort: int = 1000,
    shard: int = 1,
    headers_up_to: int | None = None,
    console: Console | None = None,
) -> dict:
    """`headers_up_to`: above this N, nothing that opens every store runs (the catalog build, the first batch
    without it)."""
    console = console or plain_console()
    results: dict = {}
    for n in sizes:
        folder = Path(workdir) / f"scale-{n}"
        make_corpus(folder, n, shard, console)
        table = write_cohort(folder, n, min(cohort, n), shard)
        every_header = headers_up_to is None or n <= headers_up_to
        if every_header:
            row: dict = {"build": measure(_catalog_build, str(folder), True)}
        else:
            catalog_from_template(folder)
            row = {"build": None}
        for mode, use in (("catalog", True), ("headers", False)):
            row[f"first_batch_{mode}"] = measure(_first_batch, str(folder), use) if use or every_header else None
            row[f"cohort_{mode}"] = measure(
                _cohort, str(folder), use, str(table)
            )  # a cohort opens at most its own stores
        row["catalog_mb"] = (folder / CATALOG_NAME).stat().st_size / 2**20
        results[n] = row
        console.print(f"N = {n:,}: done", highlight=False)
    _print(console, results, cohort, shard)
    write_json_atomic(Path(workdir) / "bench_scale.json", results)
    return results


def _print(console: Console, results: dict, cohort: int, shard: int) -> None:
    table = Table(
        title=f"Start-up at scale (tiny synthetic stores, {256**shard:,} sub-folders by slide-id prefix; "
        "each figure a fresh process: seconds, peak RSS MB / growth over start-up)"
    )
    for col in (
        "N",
        "catalog build",
        "catalog file",
        "first batch, catalog",
        "first batch, headers",
        f"cohort of {cohort:,}, catalog",
        f"cohort of {cohort:,}, headers",
    ):
        table.add_column(col, justify="right")

    def cell(r: dict | None) -> str:
        if r is None:
            return "not run (--headers-up-to)"
        return f"{r['seconds']:.2f} s, {r['rss_mb']:.0f}/{r['rss_growth_mb']:+.0f} MB"

    for n, r in results.items():
        table.add_row(
            f"{n:,}",
            cell(r["build"]),
            f"{r['catalog_mb']:.1f} MB",
            cell(r["first_batch_catalog"]),
            cell(r["first_batch_headers"]),
            cell(r["cohort_catalog"]),
            cell(r["cohort_headers"]),
        )
    console.print(table)
    biggest, small = max(results), min(results)
    first = {n: r["first_batch_catalog"] for n, r in results.items()}
    growth = first[biggest]["rss_growth_mb"]
    if biggest > small:  # RSS per store: the slope between the smallest and the largest N (fixed costs cancel)
        per_100k = (growth - first[small]["rss_growth_mb"]) / (biggest - small) * 100_000
    else:
        per_100k = growth / biggest * 100_000
    console.print(
        f"Targets (issue 16, at 100k stores): first batch with the catalog <= {TARGETS['first_batch_s_at_100k']:.0f} s "
        f"(at {biggest:,}: {first[biggest]['seconds']:.1f} s); RSS growth <= {TARGETS['rss_growth_mb_per_100k']:.0f} "
        "MB "
        f"per 100k stores (measured: {per_100k:.0f} MB per "
        f"100k{'' if biggest > small else ', an upper bound from one N'})",
        highlight=False,
    )
    if biggest > small:
        ratio = first[biggest]["seconds"] / first[small]["seconds"]
        console.print(
            f"First batch with the catalog grows {ratio:.1f}x for {biggest / small:.0f}x the stores "
            f"({'at most' if ratio <= biggest / small else 'MORE than'} linear)",
            highlight=False,
        )
