"""Know the bill before paying it: what a tiled cohort will cost to embed and pretrain on (`mixmag plan`).

From the tiling plans alone: slides, cells, regions, tiles per level; the bytes the stores will take (float16
embeddings of D values per tile, the cell and window tables, and HDF5's own bytes, measured by building small stores
in memory the way `mixmag.store:write_store` builds them); the embedding time at a tile rate and the pretraining time
at a sample rate, given, or read from what `mixmag bench embed` / `mixmag bench pretrain` measured.
"""

from __future__ import annotations

import io
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import h5py
import numpy as np

from ..encoders.registry import get_preset
from ..errors import MixmagError
from ..fileio import read_json_limited
from ..slides.pyramids import read_mpps
from ..slides.tiling import TilingPlan, load_plan
from ..store import plan_provenance, store_from_plan, write_store_into

PAPER_PRETRAIN_SAMPLES = 48_828 * 4096  # the paper's schedule: about 200M regions (`mixmag pretrain`'s defaults)
BENCH_EMBED = "bench_embed.json"
BENCH_PRETRAIN = "bench_pretrain.json"


class BillError(MixmagError):
    """A plans folder with nothing to count."""


@dataclass
class Rate:
    value: float | None  # per second; None: unknown
    source: str  # "--tiles-per-second", "<bench file>: <which run>", or why there is none


@dataclass
class CohortBill:
    slides: int
    cells: int
    regions: int
    contexts: int
    tiles: dict[str, int]  # level name -> tiles
    dim: int
    encoder: str
    store_bytes: int
    embedding_bytes: int  # the float16 embeddings alone
    embed_rate: Rate
    pretrain_samples: int
    pretrain_rate: Rate
    unreadable: dict[str, str] = field(default_factory=dict)  # slide folder -> why its plan cannot be read

    @property
    def total_tiles(self) -> int:
        return sum(self.tiles.values())

    @property
    def embed_seconds(self) -> float | None:
        return None if not self.embed_rate.value else self.total_tiles / self.embed_rate.value

    @property
    def pretrain_seconds(self) -> float | None:
        return None if not self.pretrain_rate.value else self.pretrain_samples / self.pretrain_rate.value

    def as_json(self) -> dict:
        return asdict(self) | {
            "total_tiles": self.total_tiles,
            "embed_seconds": self.embed_seconds,
            "pretrain_seconds": self.pretrain_seconds,
        }


CHUNK_CELLS = 64  # `mixmag.store`'s chunks: 64 cells of one level


def store_data_bytes(n_cells: int, n_levels: int, dim: int, n_windows: int) -> int:
    """The bytes of a store's arrays: float16 embeddings, int32 (row, col) and float32 tissue per cell, int32
    (row, col) per region or context window. HDF5 keeps whole chunks on disk, so the embeddings of a slide of more
    than 64 cells take room for a multiple of 64 (65 cells take 128 cells' room)."""
    tiles = sum(4**i for i in range(n_levels))
    rows = n_cells if n_cells <= CHUNK_CELLS else _n_chunks(n_cells) * CHUNK_CELLS
    return rows * tiles * dim * 2 + n_cells * (2 * 4 + 4) + n_windows * 2 * 4


def _in_memory_size(plan: TilingPlan, dim: int, attrs: dict, n_cells: int | None = None) -> int:
    """Bytes of the HDF5 file `write_store` would write for the plan (zeros for embeddings), built in memory."""
    if n_cells is not None:  # a plan of n_cells synthetic cells (same levels, windows), for the per-chunk bytes
        cells = [(i // 1000, i % 1000) for i in range(n_cells)]
        plan = plan.model_copy(update={"cells": cells, "cell_tissue": [0.5] * n_cells})
    n = len(plan.cells)
    levels = [np.zeros((n, 4**i, dim), np.float16) for i in range(len(plan.levels.mpps))]
    buffer = io.BytesIO()
    with h5py.File(buffer, "w") as f:
        write_store_into(f, store_from_plan(plan, levels, attrs))
    return len(buffer.getbuffer())


def hdf5_overhead(plan: TilingPlan, attrs: dict) -> tuple[float, float]:
    """HDF5's bytes beyond the arrays: a fixed part (headers, attributes) and a part per chunk of 64 cells (chunk
    index), measured on stores of the plan built in memory with one value per tile."""
    n_levels, n_windows = len(plan.levels.mpps), len(plan.regions) + len(plan.contexts)

    def overhead(n: int) -> int:
        return _in_memory_size(plan, 1, attrs, n) - store_data_bytes(n, n_levels, 1, n_windows)

    small, large = CHUNK_CELLS, CHUNK_CELLS * 65
    per_chunk = max(0.0, (overhead(large) - overhead(small)) / (n_levels * (65 - 1)))
    real = _in_memory_size(plan, 1, attrs) - store_data_bytes(len(plan.cells), n_levels, 1, n_windows)
    return real - per_chunk * n_levels * _n_chunks(len(plan.cells)), per_chunk


def _n_chunks(n_cells: int) -> int:
    return math.ceil(n_cells / CHUNK_CELLS) if n_cells else 0


def _attrs_like(plan_path: Path, plan: TilingPlan, encoder: str, dim: int, output: str) -> dict:
    """Attributes the size of a real store's (a weights digest is 16 hex digits, the precision a short word)."""
    return {
        "compute_dtype": "bfloat16",
        **plan_provenance(plan_path, plan),
        "read_mode": "derive",
        "read_mpps": read_mpps(plan, "derive"),
        "encoder": encoder,
        "encoder_weights_digest": "0" * 16,
        "encoder_output": output,
        "embedding_dim": dim,
    }


def embed_rate(tiles_per_second: float | None, bench_dir: Path | None) -> Rate:
    """The tile rate given, else the best GPU run of `mixmag bench embed` in `bench_dir`, else unknown."""
    if tiles_per_second:
        return Rate(tiles_per_second, "--tiles-per-second")
    bench = _bench(bench_dir, BENCH_EMBED)
    runs = (bench.get("gpu") or {}).get("runs") or [] if bench else []
    rates = [r.get("tiles_per_s") for r in runs if isinstance(r, dict)]
    rates = [float(r) for r in rates if isinstance(r, (int, float)) and math.isfinite(r) and r > 0]
    if rates:
        name = bench["gpu"].get("name", "GPU")
        return Rate(max(rates), f"{bench_dir / BENCH_EMBED}: best {name} run (per GPU)")
    return Rate(None, f"give --tiles-per-second, or run `mixmag bench embed --workdir {bench_dir}` on a GPU")


def pretrain_rate(samples_per_second: float | None, bench_dir: Path | None) -> Rate:
    """The region (sample) rate given, else the best training run of `mixmag bench pretrain`, else unknown."""
    if samples_per_second:
        return Rate(samples_per_second, "--samples-per-second")
    bench = _bench(bench_dir, BENCH_PRETRAIN)
    runs = [r for r in (bench.get("training") or [] if bench else []) if isinstance(r, dict)]
    runs = [r for r in runs if isinstance(r.get("samples_per_s"), (int, float)) and r["samples_per_s"] > 0]
    if runs:
        best = max(runs, key=lambda r: r["samples_per_s"])
        what = f"preset {best.get('preset')}, batch {best.get('batch')}"
        return Rate(float(best["samples_per_s"]), f"{bench_dir / BENCH_PRETRAIN}: best run ({what}, per device)")
    return Rate(None, f"give --samples-per-second, or run `mixmag bench pretrain --workdir {bench_dir}`")


def _bench(bench_dir: Path | None, name: str) -> dict | None:
    if bench_dir is None or not (Path(bench_dir) / name).is_file():
        return None
    data = read_json_limited(Path(bench_dir) / name, what="benchmark result")
    return data if isinstance(data, dict) else None


def cohort_bill(
    plan_paths: list[Path],
    *,
    encoder: str = "virchow2",
    output: str | None = None,
    dim: int | None = None,
    tiles_per_second: float | None = None,
    samples_per_second: float | None = None,
    pretrain_samples: int = PAPER_PRETRAIN_SAMPLES,
    bench_dir: Path | None = None,
) -> CohortBill:
    """The bill of a tiled cohort, from its plans (each read once; a plan that cannot be read is listed)."""
    preset = get_preset(encoder)
    dim = dim or preset.output_dim(output)
    plans, unreadable = [], {}
    for path in plan_paths:
        try:
            plans.append((Path(path), load_plan(path)))
        except (OSError, ValueError, MixmagError) as exc:
            unreadable[Path(path).parent.name] = str(exc)
    if not plans:
        if not unreadable:
            raise BillError(f"no readable tiling plan among {len(plan_paths)}: tile the slides first")
        slide, why = next(iter(unreadable.items()))  # why the plans found were not read: the user must see one
        raise BillError(
            f"no readable tiling plan among {len(plan_paths)} (slide {slide}: {why}); tile the slides again "
            "(`mixmag tile --force`)"
        )
    names = list(plans[0][1].levels.names)
    cells = sum(len(p.cells) for _, p in plans)
    n_levels = len(names)
    fixed, per_chunk = hdf5_overhead(plans[0][1], _attrs_like(*plans[0], preset.name, dim, output or preset.output))
    data = sum(store_data_bytes(len(p.cells), n_levels, dim, len(p.regions) + len(p.contexts)) for _, p in plans)
    chunks = sum(_n_chunks(len(p.cells)) for _, p in plans) * n_levels
    return CohortBill(
        slides=len(plans),
        cells=cells,
        regions=sum(len(p.regions) for _, p in plans),
        contexts=sum(len(p.contexts) for _, p in plans),
        tiles={name: cells * 4**i for i, name in enumerate(names)},
        dim=dim,
        encoder=preset.name,
        store_bytes=round(data + fixed * len(plans) + per_chunk * chunks),
        embedding_bytes=cells * sum(4**i for i in range(n_levels)) * dim * 2,
        embed_rate=embed_rate(tiles_per_second, bench_dir),
        pretrain_samples=pretrain_samples,
        pretrain_rate=pretrain_rate(samples_per_second, bench_dir),
        unreadable=unreadable,
    )
