import numpy as np
import pytest

from mixmag.store import SlideStore, StoreError, read_store, store_problems, write_store


def make_store(n=5, dim=8, seed=0) -> SlideStore:
    rng = np.random.default_rng(seed)
    rc = np.array([(r, c) for r in range(3) for c in range(4)][:n], np.int32)
    return SlideStore(
        rc=rc,
        tissue=rng.random(n).astype(np.float32),
        embeddings={
            name: rng.normal(size=(n, 4**i, dim)).astype(np.float32) for i, name in enumerate(("5x", "10x", "20x"))
        },
        attrs={
            "slide_id": "s1",
            "encoder": "stats",
            "encoder_weights_digest": "abc",
            "level_mpps": [2.0, 1.0, 0.5],
            "slide_mpp": 0.2631,
            "cell_px": 448 / 0.2631,
        },
    )


def test_round_trip(tmp_path):
    store = make_store()
    path = write_store(tmp_path / "s1.h5", store)
    back = read_store(path)
    np.testing.assert_array_equal(back.rc, store.rc)
    for name in store.embeddings:
        assert back.embeddings[name].dtype == np.float16
        np.testing.assert_allclose(back.embeddings[name], store.embeddings[name], rtol=1e-3, atol=1e-3)
    assert back.attrs["level_mpps"] == [2.0, 1.0, 0.5] and back.attrs["format_version"] == 1
    assert back.level_names == ["5x", "10x", "20x"] and back.dim == 8 and len(back) == 5
    assert not list(tmp_path.glob("*.partial"))


def test_invalid_stores_are_refused_with_the_reason(tmp_path):
    store = make_store()
    store.embeddings["10x"][2, 1, 0] = np.nan
    with pytest.raises(StoreError, match=r"emb/10x holds NaN or Inf values \(1 cells\)"):
        write_store(tmp_path / "bad.h5", store)
    assert not (tmp_path / "bad.h5").exists()
    store = make_store()
    store.embeddings["20x"] = store.embeddings["20x"][:, :4]
    assert any("emb/20x has shape" in p for p in store_problems(store))
    store = make_store()
    del store.attrs["encoder"]
    assert store_problems(store) == ["provenance attribute 'encoder' missing"]


def test_a_file_that_is_not_a_store(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"garbage")
    with pytest.raises(StoreError, match="not a readable mixmag store"):
        read_store(tmp_path / "x.h5")
    with pytest.raises(StoreError, match="store not found"):
        read_store(tmp_path / "missing.h5")
