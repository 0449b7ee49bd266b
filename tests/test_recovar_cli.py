"""`cryonb recovar pipeline|analyze|compute-state|compute-trajectory` end to end on files written to a
temporary folder (synthetic particles with shifts and CTF), plus bad-input handling."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from cryonb.cli import main
from cryonb.methods import recovar as rc
from cryonb import synthetic


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("recovar")
    syn = synthetic.synthetic_dataset(D=16, n=400, n_states=2, snr=2.0, ctf=True, shifts=True, seed=7)
    paths = synthetic.write_synthetic(syn, tmp / "data")
    out = tmp / "run"
    rc_ = main(["recovar", "pipeline", str(paths["particles"]), "-o", str(out), "--poses", str(paths["poses"]),
                "--ctf", str(paths["ctf"]), "--zdim", "1,2", "--n-pcs", "4", "--n-columns", "24", "--block-size", "12",
                "--correct-contrast"])
    assert rc_ == 0
    return syn, paths, out, tmp


def test_pipeline_outputs(data):
    syn, paths, out, tmp = data
    for f in ["model/params.json", "model/params.npz", "model/halfsets.npz", "model/zdim_1/latent_coords.npy",
              "model/zdim_2/latent_precision.npy", "model/zdim_2/contrasts.npy", "model/zdim_2/latent_coords_noreg.npy",
              "output/volumes/mean.mrc", "output/volumes/mean_half1_unfil.mrc", "output/volumes/mean_half2_unfil.mrc",
              "output/volumes/mask.mrc", "output/volumes/dilated_mask.mrc", "output/volumes/eigen_pos0000.mrc",
              "output/volumes/eigen_neg0003.mrc", "output/volumes/variance4.mrc", "report.html", "run.log"]:
        assert (out / f).exists(), f
    p = json.loads((out / "model/params.json").read_text())
    assert p["D"] == 16 and p["n_particles"] == 400 and abs(p["apix"] - 3.0) < 1e-6
    s = np.array(p["eigenvalues"]); assert (np.diff(s) <= 1e-6 * s.max()).all()
    z = np.load(out / "model/zdim_1/latent_coords.npy"); c = np.load(out / "model/zdim_1/contrasts.npy")
    assert z.shape == (400, 1) and np.isfinite(z).all() and ((c > 0) & (c <= 2)).all()
    # two states: the first PC separates them
    lab = syn["labels"]
    gap = abs(z[lab == 0, 0].mean() - z[lab == 1, 0].mean()) / z[:, 0].std()
    assert gap > 1.0, gap
    # the mean read back from the MRC matches the true population mean
    from cryonb.io import read_map
    from cryonb.fourier import fsc
    m, apix = read_map(out / "output/volumes/mean.mrc")
    truth = torch.as_tensor(syn["volumes"][torch.as_tensor(lab)].mean(0))
    assert fsc(torch.as_tensor(m), truth)[1][1:5].min() > 0.8
    h = np.load(out / "model/halfsets.npz")["halfset"]; assert set(np.unique(h)) == {0, 1}


def test_compute_state_trajectory_analyze(data):
    syn, paths, out, tmp = data
    z = np.load(out / "model/zdim_1/latent_coords.npy")
    lab = syn["labels"]
    pts = np.array([[z[lab == 0, 0].mean()], [z[lab == 1, 0].mean()]])
    np.savetxt(tmp / "pts.txt", pts)
    assert main(["recovar", "compute-state", str(out), "-o", str(tmp / "states"), "--latent-points", str(tmp / "pts.txt")]) == 0
    from cryonb.io import read_map
    v0, v1 = (torch.as_tensor(read_map(tmp / f"states/vol000{k}.mrc")[0]) for k in (0, 1))
    t0, t1 = syn["volumes"][0], syn["volumes"][1]
    d = t1 - t0
    # each state's volume is closer to its own truth along the difference direction
    proj = lambda v: float(((v - 0.5 * (t0 + t1)) * d).sum() / (d * d).sum())
    assert proj(v0) < proj(v1), (proj(v0), proj(v1))
    # external embedding (e.g. another method's z.npy): reweighting by the labels themselves
    np.save(tmp / "zext.npy", lab[:, None].astype(np.float32))
    np.savetxt(tmp / "pts_ext.txt", np.array([[0.0], [1.0]]))
    assert main(["recovar", "compute-state", str(out), "-o", str(tmp / "ext"), "--latent-points", str(tmp / "pts_ext.txt"),
                 "--external-z", str(tmp / "zext.npy")]) == 0
    e0, e1 = (torch.as_tensor(read_map(tmp / f"ext/vol000{k}.mrc")[0]) for k in (0, 1))
    assert proj(e0) < proj(e1)
    assert main(["recovar", "compute-trajectory", str(out), "-o", str(tmp / "traj"), "--endpts", str(tmp / "pts.txt"), "--n-vols", "3"]) == 0
    assert (tmp / "traj/vol0002.mrc").exists() and np.loadtxt(tmp / "traj/path.txt").shape[0] == 3
    assert main(["recovar", "analyze", str(out), "--zdim", "2", "--n-clusters", "4", "--n-trajectories", "1", "--n-vols", "3", "--skip-umap"]) == 0
    a = out / "output/analysis_2"
    for f in ["centers.txt", "labels.npy", "density.npy", "centers/vol0003.mrc", "trajectory_0/vol0002.mrc", "report.html"]:
        assert (a / f).exists(), f


def test_lazy_matches_in_memory(data, tmp_path):
    "`--lazy` streams the images from disk in batches and gives the same mean as the in-memory run."
    syn, paths, out, tmp = data
    assert main(["recovar", "pipeline", str(paths["particles"]), "-o", str(tmp_path / "lazy"), "--poses", str(paths["poses"]),
                 "--ctf", str(paths["ctf"]), "--zdim", "1", "--n-pcs", "2", "--n-columns", "8", "--lazy", "--n-images", "200"]) == 0
    assert main(["recovar", "pipeline", str(paths["particles"]), "-o", str(tmp_path / "mem"), "--poses", str(paths["poses"]),
                 "--ctf", str(paths["ctf"]), "--zdim", "1", "--n-pcs", "2", "--n-columns", "8", "--n-images", "200"]) == 0
    from cryonb.io import read_map
    a, b = (read_map(tmp_path / f"{k}/output/volumes/mean.mrc")[0] for k in ("lazy", "mem"))
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())
    assert np.load(tmp_path / "lazy/model/zdim_1/latent_coords.npy").shape == (200, 1)
    assert np.load(tmp_path / "lazy/model/particles_ind.npy").shape == (200,)


def test_bad_input(tmp_path, capsys):
    assert main(["recovar", "pipeline", str(tmp_path / "missing.mrcs"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.mrcs" in capsys.readouterr().err
    assert main(["recovar", "analyze", str(tmp_path), "--zdim", "2"]) == 2
    assert "params.json" in capsys.readouterr().err
    assert main(["recovar", "frobnicate"]) == 2


def test_console_help():
    r = subprocess.run([sys.executable, "-m", "cryonb.cli", "recovar", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "pipeline" in r.stdout
