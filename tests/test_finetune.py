import csv
import json

import pytest
import torch
from train_runs import train_config

from mixmag.data.cohort import load_cohort
from mixmag.errors import CohortError
from mixmag.store import shared_settings
from mixmag.synth.embedding_cohort import write_embedding_cohort
from mixmag.train.finetune import Trainer, run_is_current, run_training


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cohort")
    write_embedding_cohort(d, n_specimens=80, seed=0, signal=2.5)
    return d


def config(d, out, **kw):
    """This file's runs learn the label: more epochs and a finer bootstrap than the shared small run."""
    return train_config(d, out, **(dict(epochs=8, bootstrap=200) | kw))


def test_label_in_the_embeddings_is_learned(cohort_dir, tmp_path):
    metrics = run_training(config(cohort_dir, tmp_path))
    assert metrics["test"]["auroc"] > 0.85
    lo, hi = metrics["test"]["ci95"]
    assert lo <= metrics["test"]["auroc"] <= hi
    for name in (
        "config.json",
        "splits.json",
        "metrics.json",
        "predictions_tune.csv",
        "predictions_test.csv",
        "best.pt",
    ):
        assert (tmp_path / name).is_file()
    with open(tmp_path / "predictions_test.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == metrics["test"]["specimens"] and all(0 <= float(r["score"]) <= 1 for r in rows)
    assert max(float(s) for s in rows[0]["slide_scores"].split(";")) == pytest.approx(float(rows[0]["score"]), abs=1e-6)


def test_shuffled_labels_stay_near_chance(tmp_path):
    d = tmp_path / "shuffled"
    write_embedding_cohort(d, n_specimens=120, seed=1, shuffle_labels=True)
    metrics = run_training(config(d, tmp_path / "run"))
    assert 0.2 < metrics["test"]["auroc"] < 0.8


def test_the_test_split_never_influences_selection(cohort_dir, tmp_path):
    flipped = tmp_path / "flipped.csv"
    with open(cohort_dir / "cohort.csv") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        if r["split"] == "test":
            r["label"] = str(1 - int(r["label"]))
    with flipped.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    a = run_training(config(cohort_dir, tmp_path / "a", epochs=5))
    b = run_training(config(cohort_dir, tmp_path / "b", epochs=5, cohort=str(flipped)))
    assert a["best_epoch"] == b["best_epoch"] and a["history"] == b["history"]
    wa, wb = (
        torch.load(tmp_path / "a" / "best.pt", weights_only=True),
        torch.load(tmp_path / "b" / "best.pt", weights_only=True),
    )
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert a["test"]["auroc"] == pytest.approx(1 - b["test"]["auroc"], abs=1e-9)


def test_min_loss_gradient_flows_through_the_signal_slide_only(cohort_dir, tmp_path):
    trainer = Trainer(config(cohort_dir, tmp_path, label_smoothing=0.0))
    positive = next(sp for sp in trainer.cohort.split("train") if sp.label == 1 and len(sp.slides) >= 2)
    # make one slide clearly the most positive: its loss is the minimum
    with torch.no_grad():
        logits = trainer.slide_logits(list(positive.slides))
    best = int(torch.argmax(logits))
    bags = {s: trainer.bags(s).clone().float().requires_grad_(True) for s in positive.slides}
    trainer.bags._bags.update(bags)
    loss = trainer.specimen_loss([positive])
    loss.backward()
    for k, s in enumerate(positive.slides):
        grad = bags[s].grad
        if k == best:
            assert grad is not None and grad.abs().sum() > 0
        else:
            assert grad is None or grad.abs().sum() == 0


def test_layer_decay_and_the_frozen_first_epoch(cohort_dir, tmp_path):
    d = tmp_path / "regions"
    # stores with regions: the embedding cohort's stores hold 3x3 region windows
    cfg = config(
        cohort_dir,
        tmp_path / "mix",
        bags="regions",
        epochs=2,
        batch_size=20,
        lr=1e-3,
        mixer={"init": "random", "preset": "tiny"},
    )
    trainer = Trainer(cfg)
    # the tiny preset has two blocks: lr 1e-3 x 0.75^3 for the stem, ^2 and ^1 for the blocks, 1e-3 on top
    # (the rule itself is pinned by known answers in test_optim.py)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    lr_of = {names[id(p)]: (g["lr"], g["weight_decay"]) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert lr_of["mixer.pos_embed"] == (pytest.approx(4.21875e-4), 0.0)
    assert lr_of["mixer.embed.weight"] == (pytest.approx(4.21875e-4), 0.05)
    assert lr_of["mixer.blocks.0.attn.qkv.weight"] == (pytest.approx(5.625e-4), 0.05)
    assert lr_of["mixer.blocks.1.norm2.bias"] == (pytest.approx(7.5e-4), 0.0)
    assert lr_of["aggregator.classifier.weight"] == (pytest.approx(1e-3), 0.05)
    before = {k: v.clone() for k, v in trainer.model.mixer.state_dict().items()}
    abmil_before = {k: v.clone() for k, v in trainer.model.aggregator.state_dict().items()}
    trainer.config = trainer.config.model_copy(update={"epochs": 1})
    trainer.fit()
    trainer.model.load_state_dict(torch.load(tmp_path / "mix" / "best.pt", weights_only=True))
    after = trainer.model.mixer.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # frozen during epoch 1
    assert not all(torch.equal(abmil_before[k], trainer.model.aggregator.state_dict()[k]) for k in abmil_before)
    trainer.config = trainer.config.model_copy(update={"epochs": 2})
    trainer.fit()
    assert not all(torch.equal(before[k], trainer.model.mixer.state_dict()[k]) for k in before)  # then trained jointly
    del d


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda rows: rows[0].update(label="2"), "is not binary"),
        (lambda rows: rows[1].update(slide=rows[0]["slide"]), "listed twice"),
        (lambda rows: rows[0].update(split="validation"), "is not one of train, tune, test"),
        (lambda rows: [r.update(label="0") for r in rows if r["split"] == "tune"], "tune split has only label 0"),
        (lambda rows: [r.update(split="train") for r in rows if r["split"] == "test"], "test split is empty"),
    ],
)
def test_malformed_cohorts_name_the_rows(cohort_dir, tmp_path, edit, message):
    with open(cohort_dir / "cohort.csv") as fh:
        rows = list(csv.DictReader(fh))
    edit(rows)
    bad = tmp_path / "bad.csv"
    with bad.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CohortError, match=message) as info:
        load_cohort(bad, cohort_dir / "stores")
    assert "bad.csv" in str(info.value)


def test_specimen_in_two_splits_and_unknown_slides(cohort_dir, tmp_path):
    with open(cohort_dir / "cohort.csv") as fh:
        rows = list(csv.DictReader(fh))
    multi = next(r["specimen"] for r in rows if sum(x["specimen"] == r["specimen"] for x in rows) > 1)
    first = next(i for i, r in enumerate(rows) if r["specimen"] == multi)
    rows[first]["split"] = "test" if rows[first]["split"] != "test" else "train"
    rows.append({"specimen": "ZZZ", "slide": "nowhere", "label": "1", "split": "train"})
    bad = tmp_path / "leak.csv"
    with bad.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CohortError, match=f"specimen '{multi}' is in several splits"):
        load_cohort(bad, cohort_dir / "stores")
    rows[first]["split"] = rows[first + 1]["split"]
    with bad.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    with pytest.raises(CohortError, match="no store for 1 slide.*nowhere"):
        load_cohort(bad, cohort_dir / "stores")


def test_cli_pretrain_encode_train_evaluate_compare(cohort_dir, tmp_path):
    from typer.testing import CliRunner

    from mixmag.cli import app

    runner = CliRunner()
    pre = tmp_path / "pre.yaml"
    pre.write_text(
        f"stores: {cohort_dir / 'stores'}\nout: {tmp_path / 'pre'}\npreset: tiny\nbatch_size: 16\nsteps: "
        "6\nwarmup_steps: 1\n"
        "precision: fp32\nworkers: 0\nper_slide: 16\npool: 4\nlog_every: 3\ncheckpoint_every: 6\ntensorboard: false\n"
    )
    result = runner.invoke(
        app, ["pretrain", "--config", str(pre), "--set", f"exclude_test_of=[{cohort_dir / 'cohort.csv'}]"]
    )
    assert result.exit_code == 0, result.output
    n_test = sum(len(sp.slides) for sp in load_cohort(cohort_dir / "cohort.csv", cohort_dir / "stores").split("test"))
    n_all = len(list((cohort_dir / "stores").glob("*.h5")))
    assert f"{n_all - n_test} of {n_all} stores (the test slides of" in " ".join(result.output.split())
    result = runner.invoke(
        app,
        [
            "encode",
            "--mixer",
            str(tmp_path / "pre" / "mixer.safetensors"),
            "--stores",
            str(cohort_dir / "stores"),
            "--out",
            str(tmp_path / "enc"),
        ],
    )
    assert result.exit_code == 0, result.output
    mil = tmp_path / "mil.yaml"
    mil.write_text(
        f"cohort: {cohort_dir / 'cohort.csv'}\nstores: {cohort_dir / 'stores'}\nout: {tmp_path / 'cls'}\nbags: cls\n"
        f"encoded: {tmp_path / 'enc'}\nepochs: 2\nbatch_size: 8\nlr: 3.0e-3\nbootstrap: 200\n"
    )
    result = runner.invoke(app, ["train", "--config", str(mil)])
    assert result.exit_code == 0, result.output
    assert "test: AUROC" in result.output
    result = runner.invoke(
        app,
        [
            "train",
            "--config",
            str(mil),
            "--set",
            "bags=20x",
            "--set",
            "encoded=null",
            "--set",
            f"out={tmp_path / 't20'}",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["evaluate", str(tmp_path / "cls")])
    assert result.exit_code == 0 and "95% CI" in result.output
    result = runner.invoke(app, ["compare", str(tmp_path / "cls"), str(tmp_path / "t20")])
    assert result.exit_code == 0 and "paired DeLong" in result.output, result.output
    result = runner.invoke(app, ["train", "--config", str(mil), "--set", "bags=regions"])
    assert result.exit_code == 2 and "mixer" in result.output


def test_experiment_grid_writes_tables_and_plot(cohort_dir, tmp_path):
    from typer.testing import CliRunner

    from mixmag.cli import app

    grid = tmp_path / "grid.yaml"
    grid.write_text(
        f"out: {tmp_path / 'exp'}\nseeds: [0]\nmethods: [abmil-5x, abmil-20x, abmil-all, random-cls]\n"
        f"tasks:\n  - {{name: A, cohort: {cohort_dir / 'cohort.csv'}, stores: {cohort_dir / 'stores'}}}\n"
        f"  - {{name: B, cohort: {cohort_dir / 'cohort.csv'}, stores: {cohort_dir / 'stores'}}}\n"
        "train: {epochs: 2, batch_size: 16, lr: 3.0e-3, bootstrap: 100, freeze_epochs: 1}\n"
    )
    result = CliRunner().invoke(app, ["experiment", str(grid)])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "exp" / "results.md").read_text()
    assert md.count("**") == 2 * 3 and md.count("<u>") == 3  # best and second best in A, B and the average
    assert "| abmil-20x |" in md and "average" in md
    rows = list(csv.reader(open(tmp_path / "exp" / "results.csv")))
    assert rows[0] == ["method", "A", "B", "average"] and len(rows) == 5
    assert (tmp_path / "exp" / "differences.png").stat().st_size > 1000
    again = CliRunner().invoke(app, ["experiment", str(grid)])
    assert again.output.count("(reused)") == 8
    bad = tmp_path / "bad.yaml"
    bad.write_text(grid.read_text().replace("abmil-5x", "abmil-40x"))
    result = CliRunner().invoke(app, ["experiment", str(bad)])
    assert result.exit_code == 2 and "unknown method 'abmil-40x'" in result.output


@pytest.mark.parametrize(("level", "tokens"), [("5x", 9), ("20x", 144)])
def test_random_mixer_over_one_magnification(cohort_dir, tmp_path, level, tokens):
    from mixmag.studies.experiments import GridConfig, Task, method_config

    grid = GridConfig(
        out=str(tmp_path),
        tasks=[Task(name="A", cohort=str(cohort_dir / "cohort.csv"), stores=str(cohort_dir / "stores"))],
        methods=[f"random-{level}-cls"],
        train={"epochs": 1, "batch_size": 16, "bootstrap": 100},
    )
    cfg = method_config(grid, grid.tasks[0], f"random-{level}-cls", 0)
    trainer = Trainer(cfg)
    slide = trainer.cohort.split("train")[0].slides[0]
    assert trainer.bags(slide).shape[1] == tokens
    assert trainer.model.mixer.pos_embed.shape[1] == tokens
    metrics = trainer.fit()
    assert 0 <= metrics["test"]["auroc"] <= 1


def test_a_cohort_mixing_encoders_is_refused_and_mixed_precision_is_said(cohort_dir, tmp_path):
    import json
    import shutil

    import h5py

    from mixmag.store import MixedStoresWarning, StoreError

    stores = tmp_path / "stores"
    shutil.copytree(cohort_dir / "stores", stores)
    files = sorted(stores.glob("*.h5"))
    with h5py.File(files[3], "a") as f:
        f.attrs["compute_dtype"] = "bfloat16"  # embedded on a GPU, the rest on a CPU: said, trained
    with pytest.warns(MixedStoresWarning, match=f"compute_dtype .*bfloat16.* in 1 store.*{files[3].name}"):
        run_training(config(cohort_dir, tmp_path / "run", stores=str(stores), epochs=1))
    from typer.testing import CliRunner

    from mixmag.cli import app

    cfg = tmp_path / "mil.yaml"
    cfg.write_text(json.dumps(config(cohort_dir, tmp_path / "cli", stores=str(stores), epochs=1).model_dump()))
    result = CliRunner().invoke(app, ["train", "--config", str(cfg)])
    assert result.exit_code == 0 and "warning: the stores differ in compute_dtype" in " ".join(result.output.split())
    assert json.loads((tmp_path / "run" / "pipeline.json").read_text())["compute_dtype"] != "bfloat16"  # the common one
    with h5py.File(files[5], "a") as f:
        f.attrs["encoder"] = "another-encoder"  # another embedding space: refused, the file named
    with pytest.raises(StoreError, match=f"encoder: .*another-encoder.* in 1 store.*{files[5].name}.*re-embed"):
        Trainer(config(cohort_dir, tmp_path / "run2", stores=str(stores)))


def test_pretraining_can_leave_out_every_test_slide(cohort_dir, tmp_path):
    from mixmag.errors import ConfigError
    from mixmag.train.pretrain import PretrainConfig, pretraining_stores

    cohort = load_cohort(cohort_dir / "cohort.csv", cohort_dir / "stores")
    test = {s for sp in cohort.split("test") for s in sp.slides}
    everything = pretraining_stores(PretrainConfig(stores=str(cohort_dir / "stores"), out="unused"))
    kept = pretraining_stores(
        PretrainConfig(
            stores=str(cohort_dir / "stores"), out="unused", exclude_test_of=[str(cohort_dir / "cohort.csv")]
        )
    )
    assert test and {p.stem for p in everything} - {p.stem for p in kept} == test
    only_test = tmp_path / "only_test"
    only_test.mkdir()
    for slide in test:
        (only_test / f"{slide}.h5").write_bytes((cohort_dir / "stores" / f"{slide}.h5").read_bytes())
    with pytest.raises(ConfigError, match="every store is a test slide"):
        pretraining_stores(
            PretrainConfig(stores=str(only_test), out="unused", exclude_test_of=[str(cohort_dir / "cohort.csv")])
        )


def test_a_grid_run_is_retrained_when_its_mixer_changed_under_the_same_path(cohort_dir, tmp_path):
    import h5py

    from mixmag.studies.experiments import GridConfig, Task, run_grid
    from mixmag.train.pretrain import PretrainConfig, run_pretraining

    def pretrain(seed):
        run_pretraining(
            PretrainConfig(
                stores=str(cohort_dir / "stores"),
                out=str(tmp_path / f"pre{seed}"),
                preset="tiny",
                batch_size=16,
                steps=2,
                warmup_steps=1,
                precision="fp32",
                workers=0,
                per_slide=16,
                pool=4,
                seed=seed,
                tensorboard=False,
            ),
            device=torch.device("cpu"),
        )
        (tmp_path / f"pre{seed}" / "mixer.safetensors").replace(tmp_path / "mixer.safetensors")
        (tmp_path / f"pre{seed}" / "mixer.json").replace(tmp_path / "mixer.json")

    grid = GridConfig(
        out=str(tmp_path / "exp"),
        methods=["MEM-cls", "MEM-cls-frozen", "abmil-20x"],
        tasks=[Task(name="A", cohort=str(cohort_dir / "cohort.csv"), stores=str(cohort_dir / "stores"))],
        pretrained={"MEM": str(tmp_path / "mixer.safetensors")},
        train={"epochs": 1, "bootstrap": 100},
    )

    def statuses():
        seen = {}
        run_grid(grid, on_run=lambda task, method, seed, auroc, status: seen.__setitem__(method, status))
        return seen

    pretrain(0)
    assert set(statuses().values()) == {"trained"}
    assert set(statuses().values()) == {"reused"}
    encoded = next((tmp_path / "exp" / "encoded" / "MEM" / "A").glob("*.h5"))
    first = h5py.File(encoded, "r").attrs["mixer_digest"]
    pretrain(1)  # another mixer at the same path: its runs and its precomputed outputs are stale, AB-MIL is not
    assert statuses() == {"MEM-cls": "trained", "MEM-cls-frozen": "trained", "abmil-20x": "reused"}
    assert h5py.File(encoded, "r").attrs["mixer_digest"] != first


def test_a_run_recorded_before_a_config_field_existed_is_reused_unless_it_differs(cohort_dir, tmp_path):
    """A field added to TrainConfig since a run was trained (e.g. `aggregator`) reads as its default in the old record:
    the run is reused; a recorded value other than the default is still a different run."""
    cfg = config(cohort_dir, tmp_path, epochs=1, bootstrap=100)
    run_training(cfg)
    settings = shared_settings(list(load_cohort(cfg.cohort, cfg.stores).stores.values()))
    assert run_is_current(cfg, settings)
    recorded = json.loads((tmp_path / "config.json").read_text())
    del recorded["aggregator"]  # written before the field existed
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert run_is_current(cfg, settings)
    recorded["aggregator"] = "mean"
    (tmp_path / "config.json").write_text(json.dumps(recorded))
    assert not run_is_current(cfg, settings)
