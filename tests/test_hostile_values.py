"""Hostile values (issue 22 §4, 9, 12, 14-16): every value that becomes a path or a size is bounded, and a damaged
run file is one sentence. Each case runs the command a user would, asserts one sentence naming the file (never a
traceback), and that nothing outside the output folder changed."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import pytest
from hostile_world import tile_and_embed
from train_runs import train_config
from typer.testing import CliRunner

from mixmag.cli import app
from mixmag.config import load_config
from mixmag.errors import ConfigError, PlanError
from mixmag.ids import UnsafeIdError, check_id
from mixmag.slides.tiling import load_plan
from mixmag.store import write_store
from mixmag.synth.stores import synthetic_store
from mixmag.train.finetune import TrainConfig, run_training
from mixmag.train.pretrain import PretrainConfig


def _invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def _changed_outside(root: Path, before: dict[Path, int], *allowed: Path) -> list[Path]:
    """Files under root that are new, changed or gone since `before` and lie in none of the allowed folders."""
    now = _files(root)
    changed = {p for p, t in now.items() if before.get(p) != t} | (set(before) - set(now))
    return sorted(p for p in changed if not any(p.is_relative_to(a) for a in allowed))


def _one_sentence(result, code: int, *needles: str) -> str:
    """The command failed with `code` and said why in one line (no traceback) holding every needle."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if any(n in line for n in needles[:1])]
    assert len(lines) == 1, result.output
    for needle in needles:
        assert needle in lines[0], (needle, result.output)
    return lines[0]


@pytest.fixture(scope="module")
def tiled(tmp_path_factory) -> Path:
    """A real 384 x 384 um slide tiled into 6 x 6 cells of 32 px tiles (tiles/s/plan.json), and its store."""
    return tile_and_embed(tmp_path_factory.mktemp("values"), "stores")


def _copy_plan(tiled: Path, root: Path, edit) -> Path:
    """root/tiles/s/plan.json: the fixture's plan with `edit(plan_dict)` applied; returns the plans folder."""
    plans = root / "tiles"
    shutil.copytree(tiled / "tiles" / "s", plans / "s")
    path = plans / "s" / "plan.json"
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))
    return plans


# -- §12 the id rule: a whole-string match -----------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["S1\n", "S1\r", "S1\r\n", "S1\x00", "S\x001", "S1\u2024h5", "Ｓ1", "S1\u200b", "S1 "])
def test_ids_with_a_final_newline_nul_or_lookalike_are_refused(bad):
    with pytest.raises(UnsafeIdError, match="plan.json"):
        check_id(bad, where="plan.json")


def test_a_plan_whose_slide_id_ends_in_a_newline_makes_no_store(tiled, tmp_path):
    plans = _copy_plan(tiled, tmp_path, lambda d: d["slide"].update(slide_id="s\n"))
    before = _files(tmp_path)
    out = tmp_path / "out"
    result = _invoke("embed", "--plans", plans, "--out", out, "--encoder", "stats", "--workers", 0, "--device", "cpu")
    _one_sentence(result, 1, "plan.json", "not a safe file name")
    assert not list(out.glob("*.h5")) if out.exists() else True
    assert _changed_outside(tmp_path, before, out) == []


def test_a_store_whose_slide_id_ends_in_a_newline_is_invalid(tiled, tmp_path):
    store = shutil.copy(tiled / "stores" / "s.h5", tmp_path / "s.h5")
    with h5py.File(store, "r+") as f:
        f.attrs["slide_id"] = "s\n"
    before = _files(tmp_path)
    result = _invoke("store", "validate", store)
    _one_sentence(result, 1, "s.h5", "is not a safe file name")
    assert _changed_outside(tmp_path, before) == []


# -- §4 names from configs that become folders -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "x/y", "..", "x\n"])
def test_an_experiment_task_name_that_would_leave_the_output_folder_is_refused(tmp_path, name):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"out: {tmp_path / 'out'}\ntasks:\n  - name: {json.dumps(name)}\n    cohort: c.csv\n    stores: s\n"
        "methods: [abmil-20x]\n"
    )
    before = _files(tmp_path)
    result = _invoke("experiment", grid)
    _one_sentence(result, 2, f"{grid} line 3", "`tasks.0.name`", "not a safe file name")
    assert _changed_outside(tmp_path, before) == [] and not (tmp_path / "out").exists()


def test_a_mixer_name_that_would_climb_out_of_the_output_folder_is_refused(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"out: {tmp_path / 'out'}\ntasks: [{{name: t, cohort: c.csv, stores: s}}]\nmethods: [abmil-20x]\n"
        "pretrained:\n  '..': m.safetensors\n"
    )
    result = _invoke("experiment", grid)
    _one_sentence(result, 2, f"{grid} line 4", "mixer name '..' does not make a safe folder name")


def test_a_demo_cohort_table_named_by_a_path_is_refused(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text("cohort_tables:\n  /tmp/elsewhere: c.csv\n")
    before = _files(tmp_path)
    result = _invoke("demo", "--config", config, "--out", tmp_path / "out")
    _one_sentence(result, 2, f"{config} line 2", "'/tmp/elsewhere' of `cohort_tables`", "not a safe file name")
    assert _changed_outside(tmp_path, before) == []


# -- §9, §15 plans: finite, inside their grid, no cell twice -----------------------------------------------------------


def _set_first_cell(value):
    def edit(d):
        d["cells"][0] = value

    return edit


PLAN_EDITS = {
    "cell_px NaN": (lambda d: d.update(cell_px=float("nan")), "cell_px"),
    "cell_px other": (lambda d: d.update(cell_px=d["cell_px"] * 2), "cell_px"),
    "mpp infinite": (lambda d: d["slide"].update(mpp=float("inf")), "slide.mpp"),
    "mpp implausible": (lambda d: d["slide"].update(mpp=1e-9), "slide.mpp"),
    "grid larger": (lambda d: d.update(n_rows=10**9), "grid"),
    "cell 10^12": (_set_first_cell([10**12, 0]), "outside the 6 x 6 grid"),
    "cell 10^30": (_set_first_cell([10**30, 0]), "outside the 6 x 6 grid"),
    "cell negative": (_set_first_cell([-1, 0]), "outside the 6 x 6 grid"),
    "duplicates": (
        lambda d: d.update(cells=[d["cells"][0]] * 200_000, cell_tissue=[0.5] * 200_000),
        "more than once",
    ),
    "tissue NaN": (lambda d: d["cell_tissue"].__setitem__(0, float("nan")), "cell_tissue"),
    "fractions missing": (lambda d: d.update(cell_tissue=d["cell_tissue"][:-1]), "tissue fractions"),
    "region outside": (lambda d: d["regions"].__setitem__(0, [5, 5]), "outside the 6 x 6 grid"),
}


@pytest.mark.parametrize("kind", sorted(PLAN_EDITS))
def test_a_forged_plan_is_refused_before_any_cell_is_embedded(tiled, tmp_path, kind):
    edit, needle = PLAN_EDITS[kind]
    plans = _copy_plan(tiled, tmp_path, edit)
    with pytest.raises(PlanError, match="re-run `mixmag tile`") as caught:
        load_plan(plans / "s")
    assert needle in str(caught.value) and "\n" not in str(caught.value)
    before = _files(tmp_path)
    out = tmp_path / "out"
    result = _invoke("embed", "--plans", plans, "--out", out, "--encoder", "stats", "--workers", 0, "--device", "cpu")
    _one_sentence(result, 1, "plan.json", "not a valid mixmag tiling plan", needle)
    assert not out.exists() or not list(out.rglob("*.h5"))
    assert _changed_outside(tmp_path, before, out) == []


# -- §9 stores: geometry that is not finite is refused, never exported as INT64_MIN ------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -448.0, 0.0, 1e300])
def test_a_store_with_non_finite_cell_px_fails_validate_and_export(tiled, tmp_path, value):
    store = shutil.copy(tiled / "stores" / "s.h5", tmp_path / "s.h5")
    with h5py.File(store, "r+") as f:
        f.attrs["cell_px"] = value
    before = _files(tmp_path)
    _one_sentence(_invoke("store", "validate", store), 1, "s.h5", "cell_px")
    out = tmp_path / "exported"
    for fmt in ("clam", "trident"):
        result = _invoke("store", "export", store, "--format", fmt, "--out", out, "--plans", tiled / "tiles")
        _one_sentence(result, 1, "s.h5", "cell_px")
    assert not out.exists() or not [p for p in out.rglob("*") if p.is_file()]
    assert _changed_outside(tmp_path, before, out) == []


# -- §14 config values the schema accepted -----------------------------------------------------------------------------


TRAIN_VALUES = {
    "hidden": 1_000_000_000,
    "lr": "1e30",
    "weight_decay": "1e30",
    "epochs": 10**12,
    "batch_size": 10**12,
    "bootstrap": 10**12,
    "seed": -1,
    "bag_cache_mb": ".inf",
}
PRETRAIN_VALUES = {
    "base_lr": "1e30",
    "weight_decay": "1e30",
    "pool": 1_000_000_000,
    "per_slide": 1_000_000_000,
    "batch_size": 10**12,
    "steps": 10**12,
    "workers": 100_000,
    "tau": "1e30",
    "betas": "[0.9, 1.5]",
    "mixer": "{dim: 1000000000}",
    "peak_tflops": "-1",
}


@pytest.mark.parametrize("key", sorted(TRAIN_VALUES))
def test_train_config_values_past_their_bounds_name_the_file_and_key(tmp_path, key):
    config = tmp_path / "mil.yaml"
    config.write_text(
        f"cohort: {tmp_path / 'no-cohort.csv'}\nstores: {tmp_path / 'no-stores'}\nout: {tmp_path / 'run'}\n"
        f"{key}: {TRAIN_VALUES[key]}\n"
    )
    with pytest.raises(ConfigError, match=rf"{config} line 4: `{key}"):
        load_config(TrainConfig, config)
    before = _files(tmp_path)
    _one_sentence(_invoke("train", "--config", config), 2, f"{config} line 4", f"`{key}")
    assert _changed_outside(tmp_path, before) == []


@pytest.mark.parametrize("key", sorted(PRETRAIN_VALUES))
def test_pretrain_config_values_past_their_bounds_name_the_file_and_key(tmp_path, key):
    config = tmp_path / "pretrain.yaml"
    config.write_text(f"stores: {tmp_path / 'no-stores'}\nout: {tmp_path / 'run'}\n{key}: {PRETRAIN_VALUES[key]}\n")
    with pytest.raises(ConfigError, match=rf"{config} line 3: `{key}"):
        load_config(PretrainConfig, config)
    before = _files(tmp_path)
    _one_sentence(_invoke("pretrain", "--config", config, "--device", "cpu"), 2, f"{config} line 3", f"`{key}")
    assert _changed_outside(tmp_path, before) == []


def test_pool_times_per_slide_is_bounded_too(tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(f"stores: s\nout: {tmp_path / 'run'}\npool: 16384\nper_slide: 65536\n")
    with pytest.raises(ConfigError, match="pool x per_slide = 1,073,741,824 windows"):
        load_config(PretrainConfig, config)


def test_the_shipped_configs_are_inside_the_bounds():
    root = Path(__file__).resolve().parent.parent / "configs"
    assert load_config(PretrainConfig, root / "pretrain.yaml").batch_size == 4096  # the paper's scale
    assert load_config(TrainConfig, root / "mil.yaml").hidden >= 1


# -- §16 damaged run files: one sentence in evaluate, compare, report and a pretraining resume -------------------------


@pytest.fixture(scope="module")
def trained(small_cohort, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trained") / "run"
    run_training(train_config(small_cohort, out, epochs=1))
    return out


def _edit_csv(path: Path, edit) -> None:
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    fields = list(rows[0])
    fields, rows = edit(fields, rows) or (fields, rows)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def _set_first(column: str, value: str):
    def edit(fields, rows):
        rows[0][column] = value

    return edit


def _json_edit(edit):
    def apply(path: Path) -> None:
        data = json.loads(path.read_text())
        path.write_text(json.dumps(edit(data) or data))

    return apply


DAMAGES = {  # file -> (how it is damaged, what the sentence names)
    "score abc": ("predictions_test.csv", lambda p: _edit_csv(p, _set_first("score", "abc")), "'abc'"),
    "score nan": ("predictions_test.csv", lambda p: _edit_csv(p, _set_first("score", "nan")), "not a finite number"),
    "label 2": ("predictions_test.csv", lambda p: _edit_csv(p, _set_first("label", "2")), "label '2'"),
    "slide scores short": (
        "predictions_test.csv",
        lambda p: _edit_csv(p, _set_first("slide_scores", "0.5;" * 9 + "0.5")),
        "slide scores",
    ),
    "specimen twice": (
        "predictions_test.csv",
        lambda p: _edit_csv(p, lambda f, rows: (f, rows + rows[:1])),
        "listed twice",
    ),
    "one class": (
        "predictions_test.csv",
        lambda p: _edit_csv(p, lambda f, rows: (f, [r for r in rows if r["label"] == "1"])),
        "both labels",
    ),
    "no score column": (
        "predictions_test.csv",
        lambda p: _edit_csv(p, lambda f, rows: ([c for c in f if c != "score"], rows)),
        "no column score",
    ),
    "a log instead": (
        "predictions_test.csv",
        lambda p: p.write_text("step,samples,loss\n1,4,0.5\n2,8,0.4\n"),
        "no column specimen",
    ),
    "metrics truncated": ("metrics.json", lambda p: p.write_text(p.read_text()[:40]), "metrics.json"),
    "metrics a list": ("metrics.json", lambda p: p.write_text("[1, 2]"), "metrics.json"),
    "metrics auroc abc": (
        "metrics.json",
        _json_edit(lambda d: d["test"].update(auroc="abc")),
        "`test.auroc` is 'abc'",
    ),
    "metrics no test split": ("metrics.json", _json_edit(lambda d: d.pop("test") and None), "`test`"),
    "metrics ci infinite": (
        "metrics.json",
        _json_edit(lambda d: d["tune"].update(ci95=[0.1, float("inf")])),
        "`tune.ci95.1`",
    ),
    "config bootstrap abc": ("config.json", _json_edit(lambda d: d.update(bootstrap="abc")), "`bootstrap`"),
    "config no stores": ("config.json", _json_edit(lambda d: d.pop("stores") and None), "`stores`"),
}
READERS = {  # command -> (arguments for the damaged run `r` and an intact run `ok`, which files it reads)
    "evaluate": (lambda r, ok: ["evaluate", r], ("predictions_test.csv", "metrics.json", "config.json")),
    "compare": (lambda r, ok: ["compare", ok, r], ("predictions_test.csv",)),
    "report": (lambda r, ok: ["report", r, "--no-heatmaps"], ("predictions_test.csv", "metrics.json", "config.json")),
}


@pytest.mark.parametrize(
    "command, damage", [(c, d) for c in sorted(READERS) for d in sorted(DAMAGES) if DAMAGES[d][0] in READERS[c][1]]
)
def test_a_damaged_run_file_is_one_sentence_naming_it(trained, tmp_path, command, damage):
    name, edit, needle = DAMAGES[damage]
    args, _ = READERS[command]
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    edit(run / name)
    before = _files(tmp_path)
    result = _invoke(*args(run, trained))
    line = _one_sentence(result, 2, str(run / name), needle)
    assert "mixmag train" in line  # the fix
    assert _changed_outside(tmp_path, before) == []
    if command == "evaluate":
        assert "damaged" in line or "line" in line or "no column" in line or "both labels" in line


def _pretrain_config(tmp_path: Path, steps: int) -> Path:
    stores = tmp_path / "stores"
    if not stores.exists():
        stores.mkdir()
        write_store(stores / "s0.h5", synthetic_store("s0", seed=0, n_rows=6, n_cols=6))
    config = tmp_path / f"p{steps}.yaml"
    config.write_text(
        f"stores: {stores}\nout: {tmp_path / 'run'}\npreset: tiny\nbatch_size: 4\nsteps: {steps}\nprecision: fp32\n"
        "workers: 0\ntensorboard: false\npeak_tflops: 1.0\nlog_every: 1\n"
    )
    return config


@pytest.mark.parametrize(
    "log, needle",
    [
        ("specimen,label,score,slides,slide_scores\nP1,1,0.5,S1,0.5\n", "no `step` column"),
        ("step,samples,loss\n1,4,abc\n", "line 2"),
        ("step,samples,loss\n2,8,0.5\n1,4,0.4\n", "step 1 after step 2"),
        ("step,foo\n1,0.5\n", "another run's log"),
    ],
)
def test_a_pretraining_resume_over_another_runs_log_is_one_sentence(tmp_path, log, needle):
    result = _invoke("pretrain", "--config", _pretrain_config(tmp_path, 2), "--device", "cpu")
    assert result.exit_code == 0, result.output
    (tmp_path / "run" / "log.csv").write_text(log)
    resume = _pretrain_config(tmp_path, 3)
    before = _files(tmp_path)
    result = _invoke("pretrain", "--config", resume, "--device", "cpu")
    _one_sentence(result, 2, "log.csv", needle, "pretrain into a new --out")
    assert (tmp_path / "run" / "log.csv").read_text() == log  # kept for the user to look at
    assert _changed_outside(tmp_path, before, tmp_path / "run") == []


def test_a_synthetic_cohort_past_its_bounds_is_refused_before_any_slide_is_written(tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text("cohort: {n_specimens: 1000000000}\n")
    _one_sentence(_invoke("demo", "--config", config, "--out", tmp_path / "out"), 2, f"{config} line 1", "`cohort`")
    result = _invoke("synth", "cohort", tmp_path / "synth", "--cells", 100_000)
    _one_sentence(result, 2, "error:", "px a side")
    assert not (tmp_path / "out").exists() and not (tmp_path / "synth").exists()
