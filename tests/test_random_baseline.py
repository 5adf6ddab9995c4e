"""The random baseline is the pretrained mixer's architecture with fresh weights (issue 13)."""

from pathlib import Path

import pytest

from mixmag.errors import ConfigError
from mixmag.models.mixer import RegionMixer, mixer_config
from mixmag.studies.experiments import GridConfig, Task, method_config
from mixmag.train.finetune import build_mixer
from mixmag.train.mixer_file import export_mixer, export_random_twin


def _mixer(folder, preset, **overrides):
    folder.mkdir()
    cfg = mixer_config(preset, in_dim=8, **overrides)
    return str(export_mixer(folder, RegionMixer(cfg), cfg, {"preset": preset}, {}))


def _grid(tmp_path, methods, pretrained, **kw):
    return GridConfig(
        out=str(tmp_path / "exp"),
        tasks=[Task(name="A", cohort="c.csv", stores="s")],
        methods=methods,
        pretrained=pretrained,
        **kw,
    )


def test_random_rows_take_the_pretrained_mixers_architecture(tmp_path):
    small = _mixer(tmp_path / "small", "small", depth=1)
    grid = _grid(tmp_path, ["random-patch"], {"MEM": small})
    cfg = method_config(grid, grid.tasks[0], "random-patch", 0)
    mixer = build_mixer(cfg.mixer, in_dim=8, t=3, n_levels=3)
    assert cfg.mixer.init == "random"
    assert (mixer.config.dim, mixer.config.depth, mixer.config.heads) == (384, 1, 6)  # not the tiny preset's 64 / 2 / 4


def test_a_mismatched_random_preset_is_refused(tmp_path):
    small = _mixer(tmp_path / "small", "small", depth=1)
    with pytest.raises(ConfigError, match="initialisation only"):
        method_config(
            _grid(tmp_path, ["random-cls"], {"MEM": small}, random_preset="tiny"),
            Task(name="A", cohort="c", stores="s"),
            "random-cls",
            0,
        )


def test_two_architectures_need_one_random_row_each(tmp_path):
    grid = _grid(
        tmp_path,
        ["random-patch"],
        {"MEM-tiny": _mixer(tmp_path / "t", "tiny"), "MEM-small": _mixer(tmp_path / "s", "small", depth=1)},
    )
    with pytest.raises(ConfigError, match="random-MEM-small-patch"):
        method_config(grid, grid.tasks[0], "random-patch", 0)
    tiny = build_mixer(method_config(grid, grid.tasks[0], "random-MEM-tiny-cls", 0).mixer, 8, 3, 3)
    small = build_mixer(method_config(grid, grid.tasks[0], "random-MEM-small-patch", 0).mixer, 8, 3, 3)
    assert (tiny.config.dim, small.config.dim) == (64, 384)


def test_without_a_pretrained_mixer_the_random_preset_applies(tmp_path):
    grid = _grid(tmp_path, ["random-patch"], {}, random_preset="small")
    assert method_config(grid, grid.tasks[0], "random-patch", 0).mixer.preset == "small"
    assert method_config(_grid(tmp_path, ["random-patch"], {}), grid.tasks[0], "random-patch", 0).mixer.preset == "tiny"


def test_the_random_twin_is_the_pretrained_architecture_with_fresh_seeded_weights(tmp_path):
    import json

    import torch

    from mixmag.weights_io import load_safetensors

    mem = _mixer(tmp_path / "mem", "small", depth=1)
    state = torch.random.get_rng_state()
    first = export_random_twin(Path(mem), tmp_path / "r1")
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left alone
    second = export_random_twin(Path(mem), tmp_path / "r2")
    meta = [json.loads(p.with_name("mixer.json").read_text()) for p in (Path(mem), first)]
    assert meta[0]["mixer"] == meta[1]["mixer"] and meta[0]["stores"] == meta[1]["stores"]
    assert meta[1]["pretraining"]["init"] == "random" and meta[1]["pretraining"]["preset"] == "small"
    pretrained, fresh, again = (load_safetensors(p, fix="") for p in (Path(mem), first, second))
    assert all(torch.equal(fresh[k], again[k]) for k in fresh)  # seeded: the same baseline every run
    assert any(not torch.equal(fresh[k], pretrained[k]) for k in fresh if fresh[k].dtype.is_floating_point)


def test_the_demo_builds_a_frozen_random_row_only_when_asked(tmp_path):
    from mixmag.studies.demo import DemoConfig, pretrained_mixers

    mem = Path(_mixer(tmp_path / "mem", "tiny"))
    plain = pretrained_mixers(tmp_path, DemoConfig(), mem)
    assert plain == {"MEM": str(mem)} and not (tmp_path / "random-mixer").exists()  # the plain demo is unchanged
    methods = ["abmil-20x", "Random-patch-frozen", "MEM-patch-frozen"]
    mixers = pretrained_mixers(tmp_path, DemoConfig(methods=methods), mem)
    grid = _grid(tmp_path, methods, mixers)
    cfg = method_config(grid, grid.tasks[0], "Random-patch-frozen", 0)
    assert Path(mixers["Random"]).parent == tmp_path / "random-mixer" and cfg.encoded.endswith("Random/A")


def test_the_demo_statistics_table_shows_sd_ci_and_p_against_the_baseline(tmp_path):
    from mixmag.studies.benchmark_stats import CellStatistic
    from mixmag.studies.demo import statistics_markdown

    grid = _grid(tmp_path, ["abmil-20x", "MEM-patch-frozen"], {}, seeds=[0, 1])
    cells = [
        CellStatistic("A", "abmil-20x", [0.7, 0.8], 0.75, 0.0707, 0.6, 0.9, 40, None, None),
        CellStatistic("A", "MEM-patch-frozen", [0.9, 0.9], 0.9, 0.0, 0.8, 0.97, 40, 0.012, 0.15),
    ]
    lines = statistics_markdown(cells, grid, 500).splitlines()
    assert lines[2] == "| abmil-20x | 75.0 ± 7.1 [60.0, 90.0] |"
    assert lines[3] == "| MEM-patch-frozen | 90.0 ± 0.0 [80.0, 97.0, p=0.012] |"
    assert "seeds 0, 1" in lines[-1] and "500 resamples of the 40 test specimens" in lines[-1]


def test_q_values_adjust_every_comparison_against_the_baseline_for_their_number():
    """Benjamini-Hochberg by hand: sorted p (0.01, 0.02, 0.04) times m / rank (3, 1.5, 1), then the running minimum
    from the largest down: (0.03, 0.03, 0.04); the baseline's own cells have none."""
    from mixmag.studies.benchmark_stats import CellStatistic, statistics_table, with_false_discovery_rate

    def cell(task, method, p):
        return CellStatistic(task, method, [0.8], 0.8, 0.0, 0.7, 0.9, 40, p, None if p is None else 0.05)

    cells = [cell("A", "base", None), cell("A", "x", 0.04), cell("B", "base", None), cell("B", "x", 0.02)]
    cells += [cell("C", "base", None), cell("C", "x", 0.01)]
    adjusted = with_false_discovery_rate(cells)
    assert [round(c.q_vs_baseline, 12) for c in adjusted if c.q_vs_baseline is not None] == [0.04, 0.03, 0.03]
    assert [c.q_vs_baseline for c in adjusted[::2]] == [None, None, None]
    table = statistics_table(adjusted, ["A", "B", "C"], ["base", "x"], [0], 100, "base")
    assert "p=0.04, q=0.04]" in table and "p=0.02, q=0.03]" in table and "p=0.01, q=0.03]" in table
    assert "adjusted for the table's 3 comparisons" in table


def test_a_test_without_a_p_gets_no_q_and_leaves_the_others_as_a_family_of_the_rest():
    """A NaN p (DeLong on scores with no variance, as the small pixel demo gives) stopped the demo's statistics: scipy
    refuses NaN. By hand over the two finite p: (0.01, 0.04) -> (0.02, 0.04)."""
    import math

    from mixmag.studies.benchmark_stats import false_discovery_rate

    q = false_discovery_rate([0.01, float("nan"), 0.04])
    assert q[0] == pytest.approx(0.02) and math.isnan(q[1]) and q[2] == pytest.approx(0.04)
    assert all(math.isnan(v) for v in false_discovery_rate([float("nan")])) and false_discovery_rate([]) == []


def _mem_initial_mixer(cfg, seed: int):
    """The mixer weights a MEM pretraining run of `seed` starts from (it seeds torch, then builds its model)."""
    import torch

    from mixmag.models.mem import MEMPretrainer

    torch.manual_seed(seed)
    return MEMPretrainer(cfg, 0.5).mixer.state_dict()


def _differs_in_every_drawn_tensor(a: dict, b: dict) -> bool:
    import torch

    drawn = [k for k in a if a[k].dtype.is_floating_point and a[k].std() > 0]  # zeros and ones are not draws
    return bool(drawn) and all(not torch.equal(a[k], b[k]) for k in drawn)


def test_no_random_baseline_starts_from_the_mem_runs_initial_weights(tmp_path):
    """Leftover of issue 25: the frozen Random twin (seed 0) and a random-patch run of training seed 0 were drawn right
    after torch.manual_seed(0), as MEM pretraining (seed 0) draws its mixer, so both were MEM's own starting point and
    MEM and Random agreed to the digit after short pretraining. Now every random mixer has its own seed stream."""
    import torch
    from train_runs import train_config

    from mixmag.synth.benchmark import BenchmarkSpec, write_benchmark_cohort
    from mixmag.train.finetune import Trainer
    from mixmag.weights_io import load_safetensors

    cfg = mixer_config("tiny", in_dim=8, t=3, n_levels=3)
    mem = tmp_path / "mem"
    mem.mkdir()
    weights = export_mixer(mem, RegionMixer(cfg), cfg, {"preset": "tiny", "seed": 0}, {})
    twin = load_safetensors(export_random_twin(weights, tmp_path / "twin", seed=0), fix="")
    assert _differs_in_every_drawn_tensor(_mem_initial_mixer(cfg, 0), twin)

    table = write_benchmark_cohort(tmp_path / "c", BenchmarkSpec("fine", n_specimens=12, dim=8, seed=0))
    runs = [
        Trainer(
            train_config(
                tmp_path / "c",
                tmp_path / f"run{k}",
                cohort=str(table),
                bags="regions",
                seed=0,
                mixer={"init": "random", "preset": "tiny"},
            )  # fmt: skip
        ).model.mixer.state_dict()
        for k in range(2)
    ]
    assert _differs_in_every_drawn_tensor(_mem_initial_mixer(cfg, 0), runs[0])
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])  # still seeded: the same draw every run


def test_the_benchmarks_frozen_twin_is_drawn_with_the_mem_runs_pretraining_seed(tmp_path):
    import json

    from mixmag.train.mixer_file import pretrained_mixer_set

    cfg = mixer_config("tiny", in_dim=8, t=3, n_levels=3)
    twins = []
    for seed in (0, 3):
        folder = tmp_path / f"mem{seed}"
        folder.mkdir()
        weights = export_mixer(folder, RegionMixer(cfg), cfg, {"preset": "tiny", "seed": seed}, {})
        twins.append(pretrained_mixer_set(weights, ["Random-patch-frozen"], tmp_path / f"twin{seed}")["Random"])
    metas = [json.loads(Path(t).with_name("mixer.json").read_text())["pretraining"] for t in twins]
    assert [m["seed"] for m in metas] == [0, 3]  # a fresh twin for each pretraining run (each replicate)
