"""cryonb.data: the one half-set policy (`halfsets`, `random_halfsets`) and the distributed particle loader."""
from types import SimpleNamespace

import numpy as np
import pytest
import starfile
import torch

from cryonb import data, synthetic
from cryonb.core import InputError


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    return synthetic.blob_dataset(tmp_path_factory.mktemp("blob"), n=24, D=16, apix=2.0, junk_fraction=0.0, seed=3)


def test_random_halfsets_is_a_seeded_even_split():
    for n in (1, 10, 11):
        h = data.random_halfsets(n, seed=5)
        assert h.dtype == torch.int64 and h.shape == (n,)
        assert int(h.sum()) == n - n // 2 and set(h.tolist()) <= {0, 1}
    assert torch.equal(data.random_halfsets(100, 1), data.random_halfsets(100, 1))
    assert not torch.equal(data.random_halfsets(100, 1), data.random_halfsets(100, 2))


def test_auto_uses_the_files_rlnRandomSubset(blob):
    ds = data.ParticleDataset(blob["star"])
    subset = starfile.read(blob["star"])["particles"]["rlnRandomSubset"].to_numpy()
    h, used = data.halfsets(ds)                                   # default policy "auto"
    assert used == "data"
    np.testing.assert_array_equal(h.numpy(), subset - 1)          # RELION 1/2 -> 0/1, file order
    h2, used2 = data.halfsets(ds, "data")
    assert used2 == "data" and torch.equal(h, h2)


def test_auto_falls_back_to_a_seeded_random_split(blob, tmp_path):
    df = starfile.read(blob["star"], always_dict=True)
    df["particles"] = df["particles"].drop(columns="rlnRandomSubset")
    star = tmp_path / "nosubset.star"
    starfile.write(df, star)
    ds = data.ParticleDataset(star, datadir=blob["star"].parent)
    h, used = data.halfsets(ds, "auto", seed=7)
    assert used == "random" and torch.equal(h, data.random_halfsets(len(ds), 7))
    with pytest.raises(InputError, match="rlnRandomSubset"):
        data.halfsets(ds, "data")
    a, used = data.halfsets(ds, "alternate")
    assert used == "alternate" and a.tolist() == [i % 2 for i in range(len(ds))]


def test_single_or_missing_half_sets():
    one = SimpleNamespace(halfset=torch.zeros(6, dtype=torch.int64), halfset_source="file")
    h, used = data.halfsets(one, "auto", seed=0)
    assert used == "random" and int(h.sum()) == 3
    with pytest.raises(InputError, match="single half-set"):
        data.halfsets(one, "data")
    part = SimpleNamespace(halfset=torch.tensor([0, 1, -1, 1]), halfset_source="file")
    assert data.halfsets(part, "auto")[1] == "random"
    with pytest.raises(InputError, match="1 particles have no half-set"):
        data.halfsets(part, "data")
    with pytest.raises(InputError, match="halfsets must be"):
        data.halfsets(one, "odd")


def test_distributed_loader_partitions_the_particles(blob, monkeypatch):
    from cryonb import distributed
    ds = data.ParticleDataset(blob["star"])
    seen = []
    for r in range(3):                                            # three ranks, simulated
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        monkeypatch.setattr(distributed, "world_size", lambda: 3)
        dl = ds.loader(5, device="cpu", shuffle=True, seed=4, distributed=True)
        dl.set_epoch(1)
        idx = torch.cat([b["index"] for b in dl]).tolist()
        assert len(idx) == len(ds) // 3
        seen.append(idx)
    flat = sum(seen, [])
    assert sorted(flat) == list(range(len(ds)))                   # disjoint and complete (24 = 3 × 8)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    dl = ds.loader(5, device="cpu", shuffle=True, seed=4, distributed=True)
    dl.set_epoch(1); e1 = torch.cat([b["index"] for b in dl]).tolist()
    dl.set_epoch(2); e2 = torch.cat([b["index"] for b in dl]).tolist()
    assert e1 == seen[0] and e1 != e2                             # same permutation for every rank, new per epoch
