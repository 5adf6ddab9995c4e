"""A small hostile-inputs world shared by the hostile suites: one real slide tiled and embedded once, 20 stores made
from it, a cohort table and a trained run; and the helpers that check a command wrote nothing outside its folder."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.store import read_store, write_store
from mixmag.synth.patterns import tissue_like
from mixmag.synth.slide_writer import write_slide
from mixmag.train.finetune import run_training

N_SLIDES = 20
SPLITS = ["train"] * 12 + ["tune"] * 4 + ["test"] * 4


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _written_outside(root: Path, before: dict[Path, int], *allowed: Path) -> list[Path]:
    """Files under root that are new or changed since `before` and lie in none of the allowed folders."""
    return sorted(
        p for p, t in _files(root).items() if before.get(p) != t and not any(p.is_relative_to(a) for a in allowed)
    )


def _write_table(path: Path, header: list[str], rows: list[list], *, bom: bool = False) -> Path:
    with path.open("w", newline="", encoding="utf-8-sig" if bom else "utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def _box(tmp_path: Path, world: dict, slides=("S12", "S13")) -> Path:
    """tmp_path/a/stores with copies of some world stores; outputs go to tmp_path/a/out."""
    stores = tmp_path / "a" / "stores"
    stores.mkdir(parents=True)
    for s in slides:
        shutil.copy(world["stores"] / f"{s}.h5", stores / f"{s}.h5")
    return stores


def tile_and_embed(d: Path, stores: str) -> Path:
    """A real 384 x 384 um slide `d/s.tiff` tiled into 6 x 6 cells of 32 px tiles (`d/tiles/s/plan.json`) and embedded
    with the stats encoder into `d/<stores>/s.h5`; returns d."""
    image = tissue_like(768, 768, 0.5, seed=3, tissue_mask=np.ones((8, 8), bool))
    write_slide(d / "s.tiff", image, 0.5, downsamples=(1, 4))
    assert _invoke("tile", d / "s.tiff", "--out", d / "tiles", "--tile-px", 32).exit_code == 0
    result = _invoke(
        "embed", "--plans", d / "tiles", "--out", d / stores, "--encoder", "stats", "--workers", 0, "--device", "cpu"
    )
    assert result.exit_code == 0, result.output
    return d


def make_world(d: Path) -> dict:
    """A real 384 x 384 um slide (6 x 6 cells of 32 px tiles), its store, 20 stores made from it (odd ones shifted:
    the label), a cohort table that finds them through its `store` column, and a 20x AB-MIL run trained on it."""
    tile_and_embed(d, "raw")
    rng = np.random.default_rng(0)
    rows = []
    for k in range(N_SLIDES):
        store = read_store(d / "raw" / "s.h5")
        store.attrs["slide_id"] = f"S{k:02d}"
        for name, emb in store.embeddings.items():
            store.embeddings[name] = emb.astype(np.float32) + (k % 2) * 0.5 + 0.01 * rng.normal(size=emb.shape)
        write_store(d / "elsewhere" / f"S{k:02d}.h5", store)
        rows.append([f"P{k:02d}", f"S{k:02d}", k % 2, SPLITS[k], f"elsewhere/S{k:02d}.h5"])
    table = _write_table(d / "cohort.csv", ["specimen", "slide", "label", "split", "store"], rows)
    (d / "no-stores-here").mkdir()  # the run's stores folder: every store is found through the table
    run_training(train_config(d, d / "run", stores=str(d / "no-stores-here"), epochs=1))  # the table: d/cohort.csv
    return {"dir": d, "run": d / "run", "stores": d / "elsewhere", "table": table, "rows": rows}
