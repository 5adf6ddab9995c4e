"""The front door (issue 23 §4): `import mixmag` drives the whole pipeline from Python, with the CLI's checks."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest
from train_runs import train_config

import mixmag
from mixmag.errors import MixmagError


def test_import_mixmag_is_cheap_until_a_stage_is_used():
    probe = "import sys, mixmag; assert 'torch' not in sys.modules; mixmag.TrainConfig; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", probe], check=True)


def test_the_front_door_runs_the_pipeline_from_python(tmp_path, tissue_slide, small_cohort):
    tiled = mixmag.tile([tissue_slide], tmp_path / "tiles", tile_px=32)
    assert [r.outcome for r in tiled] == ["tiled"] and tiled[0].plan.regions
    embedded = mixmag.embed(tmp_path / "tiles", tmp_path / "new-stores", encoder="stats", workers=0, device="cpu")
    assert [r.outcome for r in embedded] == ["embedded"] and (tmp_path / "new-stores" / "tissue.h5").is_file()

    cohort = tmp_path / "cohort"
    shutil.copytree(small_cohort, cohort)
    mixer = mixmag.pretrain(
        dict(
            stores=str(cohort / "stores"),
            out=str(tmp_path / "mixer"),
            preset="tiny",
            steps=2,
            warmup_steps=1,
            batch_size=4,
            per_slide=4,
            pool=2,
            workers=0,
            precision="fp32",
            tensorboard=False,
            log_every=1,
            checkpoint_every=2,
        ),
        device="cpu",
    )
    assert (tmp_path / "mixer" / "mixer.safetensors").is_file(), mixer

    metrics = mixmag.train(train_config(cohort, tmp_path / "run"), device="cpu")
    assert 0 <= metrics["test"]["auroc"] <= 1
    assert mixmag.evaluate(tmp_path / "run")["test"]["auroc"] == pytest.approx(metrics["test"]["auroc"])
    scored = mixmag.predict(tmp_path / "run", stores=cohort / "stores", out=tmp_path / "p.csv", device="cpu")
    assert scored.path.is_file() and all(o.score is not None for o in scored.outcomes)
    assert mixmag.report(tmp_path / "run", heatmaps=False).name == "report.html"
    written = mixmag.export(
        [cohort / "stores" / next(iter(sorted(p.name for p in (cohort / "stores").glob("*.h5"))))],
        tmp_path / "clam",
        format="clam",
    )
    assert written


def test_the_front_door_says_what_is_wrong_in_one_sentence(tmp_path):
    with pytest.raises(MixmagError, match="config file not found"):
        mixmag.train(tmp_path / "missing.yaml")
    assert "tile" in dir(mixmag) and mixmag.__version__
    with pytest.raises(AttributeError):
        mixmag.no_such_stage  # noqa: B018


def test_the_package_names_exactly_the_front_doors_stages():
    """`mixmag/__init__.py` lists the names without importing `mixmag.api` (that would load torch): the two lists
    must not drift apart."""
    import mixmag.api

    assert sorted(mixmag.api.__all__) == sorted(n for n in mixmag.__all__ if n != "__version__")
