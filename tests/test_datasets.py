"""Tests of cryonb.datasets: AdK datasets read back through cryonb.data, one state reconstructed with
its ground-truth poses matches its ground-truth map (and not the other end of the path), junk flags,
two-state mixture, CLI."""
import json, os
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
import torch

os.environ.setdefault("OMP_NUM_THREADS", "1")
from cryonb import io as cio
from cryonb.datasets import adk_files, adk_states, make_adk_dataset, PRESETS
from cryonb.fourier import fsc, fsc_auc


def _corr(a, b):
    a, b = torch.as_tensor(a).double().ravel(), torch.as_tensor(b).double().ravel()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


@pytest.fixture(scope="module")
def dims(tmp_path_factory):
    out = tmp_path_factory.mktemp("adk")
    ds = make_adk_dataset(out, states=3, images_per_state=[400, 2, 2], D=48, apix=2.0, snr=None, seed=3,
                          max_shift_px=2.0, bfactor=50.0)
    return ds


def test_embedded_files_and_licence():
    f = adk_files()
    txt = f["readme"].read_text()
    assert "LGPL-3.0-or-later" in txt and "CC0" in txt and "Beckstein" in txt
    assert sum(p.stat().st_size for p in f.values()) < 3_000_000        # package stays small


def test_reconstruct_state_with_gt_poses(dims):
    from cryonb.data import ParticleDataset
    from cryonb.reconstruction import reconstruct_dataset
    labels = np.load(dims.labels)
    ds = ParticleDataset(dims.star, ind=np.nonzero(labels == 0)[0])
    assert len(ds) == 400 and ds.ctf is not None and float(ds.ctf.bfactor[0]) == 50.0
    res = reconstruct_dataset(ds, batch_size=200, device="cpu")
    gt0, gt2 = (torch.from_numpy(cio.read_map(dims.gt_maps[k])[0]).double() for k in (0, 2))
    m = res["map"].double()
    f, c0 = fsc(m, gt0)
    _, c2 = fsc(m, gt2)
    # noise-free images, exact poses/shifts/CTF (B = 50 Å² envelope) from the star: the state is recovered
    # to Nyquist (FSC > 0.99 in every shell); the other end of the path is not
    assert float(c0.min()) > 0.99, c0
    assert float(fsc_auc(f, c0)) > float(fsc_auc(f, c2)) + 0.05
    assert float(c2[len(c2) // 2:].mean()) < 0.8


def test_read_back_with_labels(dims):
    from cryonb.data import ParticleDataset
    ds = ParticleDataset(dims.out_dir / "particles.mrcs", poses=dims.poses, ctf=dims.ctf, labels=dims.labels)
    b = ds[np.arange(len(ds))]
    assert b["images"].shape == (404, 48, 48) and b["label"].tolist() == [0] * 400 + [1] * 2 + [2] * 2
    meta = cio.load_particles(dims.star)
    torch.testing.assert_close(b["rotations"], meta.rotations, atol=1e-4, rtol=0)
    torch.testing.assert_close(b["shifts"], meta.shifts_A, atol=1e-3, rtol=0)
    states = pd.read_csv(dims.out_dir / "states.csv")
    assert states.frame.tolist()[0] == 0 and states.frame.tolist()[-1] == 97
    p = json.loads(dims.params.read_text())
    assert p["snr"] is None and p["seed"] == 3 and p["D"] == 48 and p["apix"] == 2.0


def test_two_state_and_junk(tmp_path):
    ds = make_adk_dataset(tmp_path / "two", kind="two-state", images_per_state=20, D=48, apix=2.0, snr=0.1,
                          seed=1, junk_fraction=0.25, junk_kind="mixed")
    assert np.load(ds.labels).tolist() == [0] * 20 + [1] * 20
    junk = np.load(ds.junk)
    assert junk.dtype == bool and junk.sum() == 10
    kinds = np.load(ds.out_dir / "junk_kind.npy")
    assert set(np.unique(kinds[junk])) <= {1, 2, 3} and (kinds[~junk] == 0).all()
    g0, g1 = (cio.read_map(p)[0] for p in ds.gt_maps)
    assert _corr(g0, g1) < 0.9                                   # closed and open differ


def test_cli(tmp_path):
    from cryonb.cli import main
    assert main(["dataset", "adk", "-o", str(tmp_path / "a"), "--states", "2", "--images-per-state", "3", "-D", "48",
                        "--apix", "2", "--snr", "0.01", "--seed", "5", "--junk-fraction", "0.5"]) == 0
    assert np.load(tmp_path / "a" / "labels.npy").tolist() == [0, 0, 0, 1, 1, 1]
    assert np.load(tmp_path / "a" / "junk.npy").sum() == 3
    assert main(["dataset", "adk", "-o", str(tmp_path / "b"), "--two-state", "--images-per-state", "2", "-D", "48",
                 "--apix", "2"]) == 0
    assert main(["dataset", "adk", "-o", str(tmp_path / "c"), "-D", "40", "--apix", "1"]) == 2   # box too small
    assert PRESETS["small"] == dict(states=10, images_per_state=100, D=64, apix=1.5)
