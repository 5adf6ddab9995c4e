import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from mixmag.data.regions import RegionSamplingConfig, RegionStream, RegionTable, assemble_region, index_stores
from mixmag.errors import ConfigError
from mixmag.geometry import crop_indices, token_slots
from mixmag.store import SlideStore, write_store
from mixmag.synth.stores import synthetic_store


def coded_store(n_rows=6, n_cols=7) -> SlideStore:
    """Embeddings that say where they are: (level, global sub-row, global sub-col)."""
    rc = np.array([(r, c) for r in range(n_rows) for c in range(n_cols)], np.int32)
    emb = {}
    for level in range(3):
        per = 2**level
        e = np.zeros((len(rc), per * per, 3), np.float32)
        for k, (r, c) in enumerate(rc):
            for j in range(per * per):
                sr, sc = divmod(j, per)
                e[k, j] = (level, r * per + sr, c * per + sc)
        emb[f"{5 * per}x"] = e
    return SlideStore(rc=rc, tissue=np.ones(len(rc), np.float32), embeddings=emb, attrs={"slide_id": "coded"})


def test_regions_follow_the_token_order():
    store = coded_store()
    region = assemble_region(store, 2, 3, 3)
    for j, (level, r, c) in enumerate(token_slots(3, 3)):
        per = 2**level
        assert tuple(region[j]) == (level, 2 * per + r, 3 * per + c)


def test_a_crop_of_a_context_is_the_region_at_its_offset():
    store = coded_store()
    table = RegionTable(store)
    context = table.window_rows(0, 1, 5)
    crop = table.take(context[crop_indices(5, 3, 3, 2, 1)])
    np.testing.assert_array_equal(crop, assemble_region(store, 2, 2, 3))
    with pytest.raises(ValueError):
        crop_indices(5, 3, 3, 3, 0)


@pytest.fixture(scope="module")
def store_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("stores")
    return [
        write_store(d / f"s{i}.h5", synthetic_store(f"s{i}", seed=i, n_rows=7, n_cols=7, dim=8, context=5))
        for i in range(5)
    ]


def _batches(stream, n, workers=0):
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append({k: v.clone() for k, v in batch.items()})  # batches are reused buffers
        if len(out) == n:
            return out
    return out


@pytest.mark.parametrize("workers", [0, 2])
def test_the_stream_resumes_on_the_same_trajectory(store_files, workers):
    cfg = RegionSamplingConfig(t=3, per_slide=8, pool=2, batch_size=4, seed=3)
    entries, dim, n_levels = index_stores(store_files, cfg)
    assert (dim, n_levels) == (8, 3)
    full = _batches(RegionStream(entries, n_levels, cfg), 14, workers)
    resumed = _batches(RegionStream(entries, n_levels, cfg, start_batch=9), 5, workers)
    for a, b in zip(full[9:], resumed):
        assert torch.equal(a["x"], b["x"])
    assert not torch.equal(full[0]["x"], full[1]["x"])
    # ranks read different slides
    r0 = _batches(RegionStream(entries, n_levels, cfg, rank=0, world_size=2), 3)
    r1 = _batches(RegionStream(entries, n_levels, cfg, rank=1, world_size=2), 3)
    assert not torch.equal(r0[0]["x"], r1[0]["x"])


def test_cmem_batches_hold_two_crops(store_files):
    cfg = RegionSamplingConfig(t=3, context=5, per_slide=8, pool=2, batch_size=4)
    entries, _, n_levels = index_stores(store_files, cfg)
    batch = _batches(RegionStream(entries, n_levels, cfg), 1)[0]
    assert batch["x"].shape == batch["x_prime"].shape == (4, 189, 8)
    assert batch["x"].dtype == torch.float16


def test_index_errors(store_files):
    with pytest.raises(ConfigError, match="contexts are 5 x 5 cells but the run asks for 7 x 7"):
        index_stores(store_files, RegionSamplingConfig(t=3, context=7))
    with pytest.raises(ConfigError, match="larger than the context"):
        RegionSamplingConfig(t=5, context=3)
