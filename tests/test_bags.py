"""Bags at cohort scale: a cache with a byte budget, bag shapes from headers, reads of only the level a bag needs, and
micro-batches whose accumulated gradient is the whole step's."""

import h5py
import numpy as np
import pytest
import torch
from rich.console import Console
from train_runs import train_config

from mixmag.bench.cohort import run_cohort_benchmark
from mixmag.data.bags import BagCache, bag_shape, pad_bags, plan_micro_batches, region_bag, tile_bag
from mixmag.devices import core_left_for_reading
from mixmag.errors import CohortError
from mixmag.store import StoreError, all_finite, read_store, write_store
from mixmag.synth.stores import synthetic_store
from mixmag.train.finetune import Trainer


def stores_of(tmp_path, n, rows=4, cols=4):
    return {
        f"s{i}": write_store(tmp_path / f"s{i}.h5", synthetic_store(f"s{i}", n_rows=rows, n_cols=cols, dim=8, seed=i))
        for i in range(n)
    }


def test_the_cache_keeps_bags_within_its_budget_dropping_the_least_recently_used(tmp_path):
    stores = stores_of(tmp_path, 4)
    one = 16 * 16 * 8 * 2  # 16 cells x 16 20x tiles x D = 8, float16
    cache = BagCache("20x", stores, budget_bytes=2 * one)
    for s in ("s0", "s1", "s0", "s2"):  # s1 is the least recently used when s2 comes
        assert cache(s).shape == (256, 8)
        assert cache.kept_bytes <= 2 * one
    assert cache.reads == 3
    cache("s0")
    assert cache.reads == 3  # still kept
    cache("s1")
    assert cache.reads == 4  # dropped, read again
    small = BagCache("20x", stores, budget_bytes=one - 1)  # a bag over the budget is returned, never kept
    small("s3")
    small("s3")
    assert small.reads == 2 and small.kept_bytes == 0


def test_a_level_bag_reads_only_its_level_and_still_checks_it(tmp_path):
    path = tmp_path / "bad5x.h5"
    write_store(path, synthetic_store("bad5x", n_rows=4, n_cols=4, dim=8))
    with h5py.File(path, "r+") as f:
        f["emb/5x"][0, 0, 0] = np.nan  # a damaged 5x level ...
    assert tile_bag(path, "20x").shape == (256, 8)  # ... is not read for a 20x bag
    with pytest.raises(StoreError, match="NaN"):
        tile_bag(path, "5x")
    with pytest.raises(StoreError, match="NaN"):
        tile_bag(path, "all")
    assert list(read_store(tmp_path / "bad5x.h5", levels=["20x"], validate=True).embeddings) == ["20x"]


@pytest.mark.parametrize(
    ("mode", "level"), [("5x", None), ("20x", None), ("all", None), ("regions", None), ("regions", "10x")]
)
def test_bag_shapes_from_the_header_are_those_of_the_bags(tmp_path, mode, level):
    path = stores_of(tmp_path, 1, rows=6, cols=7)["s0"]
    bag = region_bag(path, level) if mode == "regions" else tile_bag(path, mode)
    assert bag_shape(path, mode, level) == bag.shape


def test_a_region_level_the_store_lacks_is_named_by_its_shape_and_its_bag_alike(tmp_path):
    path = stores_of(tmp_path, 1)["s0"]
    for read in (bag_shape, region_bag):
        with pytest.raises(CohortError, match=r"no level '40x' in the store \(levels: 5x, 10x, 20x\)"):
            read(path, "regions", "40x") if read is bag_shape else read(path, "40x")


def test_micro_batches_fit_their_budget_and_never_split_a_specimen():
    groups = [[10], [40, 5], [20], [30, 30, 30]]
    assert plan_micro_batches(groups, 4, 10**9) == [[0, 1, 2, 3]]  # fits: one micro-batch, in order
    plan = plan_micro_batches(groups, 4, 4 * 80)
    assert sorted(i for part in plan for i in part) == [0, 1, 2, 3]
    assert plan[0] == [1]  # the longest bag first, alone: 2 slides x 40 = 80 items
    for part in plan:
        slides = [n for i in part for n in groups[i]]
        assert len(part) == 1 or len(slides) * max(slides) * 4 <= 4 * 80
    assert [3] in plan  # 3 x 30 = 90 items: over the budget on its own, a micro-batch of its own


def _gradients(trainer, specimens):
    trainer.train_step(specimens)
    return {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    "extra", [dict(bags="all"), dict(bags="regions", mixer={"init": "random", "preset": "tiny"}, freeze_epochs=0)]
)
def test_a_step_split_into_micro_batches_has_the_whole_steps_gradient(small_cohort, tmp_path, extra):
    whole = Trainer(train_config(small_cohort, tmp_path / "a", **extra))
    split = Trainer(train_config(small_cohort, tmp_path / "b", micro_batch_mb=1e-4, **extra))  # ~100 bytes: one each
    batch = whole.cohort.split("train")[:8]
    assert len(whole.micro_batches(batch)) == 1
    assert len(split.micro_batches(batch)) == len(batch)
    assert any(len(sp.slides) > 1 for sp in batch)  # the minimum over a specimen's slides is kept whole
    a, b = _gradients(whole, batch), _gradients(split, batch)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-7, msg=name)
    # (parameters after AdamW's first step are not compared: it divides by |g|, so a 1e-12 gradient gap on a ~0
    # gradient can move a parameter by ~1e-6 while the update's input, the gradient, is the same)


def test_training_that_fits_its_budget_is_the_unsplit_training(small_cohort, tmp_path):
    """With the default budgets a small cohort trains exactly as before micro-batches: one padded batch a step."""
    new = Trainer(train_config(small_cohort, tmp_path / "new"))
    old = Trainer(train_config(small_cohort, tmp_path / "old"))
    train = old.cohort.split("train")
    for epoch in range(2):
        new.train_epoch(epoch)
        order = np.random.default_rng([0, epoch]).permutation(len(train))
        for start in range(0, len(order), 8):  # the loop as it was: pad the whole batch, one backward
            loss = old.specimen_loss([train[i] for i in order[start : start + 8]])
            old.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            old.optimizer.step()
    for (name, p), (_, q) in zip(new.model.named_parameters(), old.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6, msg=name)


def test_bench_cohort_table_has_every_row_and_hard_links_its_slides(tmp_path):
    results = run_cohort_benchmark(
        tmp_path,
        slides=8,
        distinct=3,
        size={"rows": 6, "cols": 6, "dim": 8},
        micro_batch_mb=0.01,  # several micro-batches a step, as at real size
        fresh_process=False,
        console=Console(quiet=True),
    )
    rows = results["rows"]
    assert set(rows) == {
        f"{what}, {place}"
        for place in ("memory", "disk")
        for what in (
            "read every store once, 20x bags",
            "read every store once, all bags",
            "read every store once, regions bags",
            "epoch: AB-MIL, 20x",
            "epoch: AB-MIL, all x",
            "epoch: tiny mixer + AB-MIL, regions",
        )
    }
    for r in rows.values():
        assert r["seconds"] > 0 and r["rss_mb"] > 0 and r["slides"] > 0
    assert rows["read every store once, 20x bags, disk"]["slides"] == 8
    assert rows["epoch: AB-MIL, 20x, disk"]["slides"] == 6  # train and tune: 4 + 2
    assert rows["epoch: AB-MIL, 20x, disk"]["bag_reads"] == 6  # each slide read once, from disk
    stores = sorted((tmp_path / "cohort-8-3-6x6x8" / "stores").glob("*.h5"))
    assert len(stores) == 8 and len({p.stat().st_ino for p in stores}) == 3  # hard links to 3 distinct stores
    assert results["distinct_gb"] > 0 and (tmp_path / "bench_cohort.json").is_file()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_all_finite_is_numpys_isfinite(dtype, bad):
    values = np.random.default_rng(0).normal(size=(5, 4, 3)).astype(dtype)
    values[0, 1, 2] = 65504 if dtype == np.float16 else 1e30  # the largest finite values stay finite
    if bad is not None:
        values[3, 2, 1] = bad
    assert all_finite(values) == bool(np.isfinite(values).all()) == (bad is None)
    assert all_finite(values[:, ::2]) == (bad is None)  # not contiguous: numpy's own check


def test_padded_batches_hold_each_bag_and_zeros_after_it():
    for _ in range(3):  # fresh allocations may reuse memory holding anything: the padding must still be zero
        garbage = torch.full((3, 9, 4), float("nan"))
        del garbage
        bags = [torch.randn(n, 4).half() for n in (5, 9, 1)]
        out, mask = pad_bags(bags)
        wide, _ = pad_bags(bags, torch.float32)
        assert out.dtype == torch.float16 and wide.dtype == torch.float32 and out.shape == wide.shape == (3, 9, 4)
        for i, b in enumerate(bags):
            assert torch.equal(out[i, : len(b)], b) and not out[i, len(b) :].any()
            assert torch.equal(wide[i, : len(b)], b.float()) and not wide[i, len(b) :].any()
            assert mask[i].tolist() == [True] * len(b) + [False] * (9 - len(b))


def test_bags_read_ahead_are_the_bags_read_when_asked_and_a_bad_one_fails_when_asked(tmp_path):
    stores = stores_of(tmp_path, 5)
    (tmp_path / "bad.h5").write_bytes(b"not an HDF5 file")
    stores["bad"] = tmp_path / "bad.h5"
    order = ["s3", "s0", "bad", "s4", "s1"]
    ahead = BagCache("20x", stores, read_ahead=2)
    ahead.expect(order)  # starts reading s3 and s0; nothing fails yet
    for slide in order[:2]:
        assert torch.equal(ahead(slide), torch.from_numpy(tile_bag(stores[slide], "20x")))
    with pytest.raises(StoreError) as read_ahead_error:
        ahead("bad")
    with pytest.raises(StoreError) as read_when_asked:
        BagCache("20x", stores, read_ahead=0)("bad")
    assert str(read_ahead_error.value) == str(read_when_asked.value)
    for slide in order[3:]:
        assert torch.equal(ahead(slide), torch.from_numpy(tile_bag(stores[slide], "20x")))
    assert ahead.reads == 4 and not ahead._pending
    assert ahead.expect(["s2", "s0"]) == 1  # s0 is kept: only s2 is to be read, and it is read ahead
    assert list(ahead._pending) == ["s2"]


def test_read_ahead_follows_the_order_when_an_expected_slide_is_skipped(tmp_path):
    stores = stores_of(tmp_path, 6)
    ahead = BagCache("20x", stores, read_ahead=2)
    ahead.expect([f"s{i}" for i in range(6)])
    assert sorted(ahead._pending) == ["s0", "s1"]
    ahead("s2")  # s0 and s1 never asked for: their reads are dropped and the window moves on past s2
    assert sorted(ahead._pending) == ["s3", "s4"]
    ahead.expect(["s5"])  # a new order: reads for the old one are dropped
    assert list(ahead._pending) == ["s5"] and ahead.reads == 1


def test_training_that_reads_bags_ahead_is_bit_for_bit_the_training_that_does_not(small_cohort, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic in both runs: read-ahead may take a core from torch otherwise
    try:
        states = []
        for read_ahead in (0, 3):
            trainer = Trainer(train_config(small_cohort, tmp_path / str(read_ahead), read_ahead=read_ahead))
            trainer.train_epoch(0)
            trainer.train_epoch(1)
            states.append(trainer.model.state_dict())
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])


def test_a_core_is_left_for_reading_only_while_reading_ahead_on_the_cpu():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with core_left_for_reading(torch.device("cpu"), reading=True):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with core_left_for_reading(torch.device("cpu"), reading=False):
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
