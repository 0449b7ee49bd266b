"""`cryonb cryobench evaluate` on a benchmark written by cryonb.simulate, scoring outputs laid
out as outside tools write them (cryoDRGN-style vol_XXX.mrc + centers.txt + labels.pkl, z.pkl)."""
import json, pickle, subprocess, sys

import numpy as np
import pandas as pd
import pytest
import torch

from cryonb.cli import main
from cryonb.io import read_map, write_map, write_poses_pkl


def two_blob(c, D=32):
    g = torch.arange(D, dtype=torch.float32) - D // 2
    zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
    return (torch.exp(-((xx - c) ** 2 + yy ** 2 + zz ** 2) / 8) + torch.exp(-((xx + 4) ** 2 + (yy - 3) ** 2 + zz ** 2) / 8))


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from cryonb.simulate import simulate_dataset
    root = tmp_path_factory.mktemp("cli")
    maps = torch.stack([two_blob(c) for c in (-3.0, 0.0, 3.0)])
    sd = simulate_dataset(maps, root / "ds", n_per_state=50, apix=2.5, snr=None, seed=1)
    lab = np.load(root / "ds" / "labels.npy")
    z = np.stack([lab + 0.05 * np.random.default_rng(0).standard_normal(len(lab)), np.zeros(len(lab))], 1)
    np.save(root / "z.npy", z)
    with open(root / "z.pkl", "wb") as f: pickle.dump(z.astype(np.float32), f)        # cryoDRGN's z.pkl layout
    # a cryoDRGN-analyze-like output: k-means maps at 5 centres along the line, their latents, per-image labels
    centres = np.array([-1.0, 0.0, 1.0, 2.0, 3.0])
    (root / "kmeans").mkdir()
    for i, c in enumerate(centres):
        k = int(np.clip(c, 0, 2))
        m = read_map(sd.gt_maps[k])[0] if c in (0.0, 1.0, 2.0) else np.zeros((32, 32, 32), np.float32)
        write_map(root / "kmeans" / f"vol_{i:03d}.mrc", m, 2.5)
    np.savetxt(root / "kmeans" / "centers.txt", np.stack([centres, np.zeros(5)], 1))
    with open(root / "kmeans" / "labels.pkl", "wb") as f:
        pickle.dump(np.abs(z[:, :1] - centres[None]).argmin(1), f)
    return root, sd


def run(argv):
    return main(["cryobench", "evaluate", *map(str, argv)])


def test_evaluate_direct_volumes(bench, capsys):
    root, sd = bench
    rc = run(["--dataset", root / "ds", "--z", root / "z.npy", "--volumes", root / "ds" / "gt_maps",
              "--embedding", "pca", "--method", "oracle", "--bounds", "-o", root / "out1"])
    assert rc == 0
    m = pd.read_csv(root / "out1" / "metrics.csv").set_index("metric").value
    assert m["per-conformation AUC mean"] == pytest.approx(15 / 32)
    assert m["per-conformation res 0.5 mean (Å)"] == pytest.approx(5.0)       # Nyquist = 2 px × 2.5 Å
    # 50 noise-free images of a smooth map per state: the back-projection is good at low resolution only
    assert 0.2 < m["upper bound AUC mean"] < 15 / 32 and m["lower bound AUC mean"] < m["upper bound AUC mean"]
    js = json.loads((root / "out1" / "metrics.json").read_text())
    assert js["method"] == "oracle" and js["apix"] == 2.5 and len(js["per_state"]) == 3
    html = (root / "out1" / "report.html").read_text()
    assert html.count("<script") >= 1 and "Plotly" in html and "oracle" in html
    for f in ("per_state_fsc.csv", "upper_fsc.csv", "lower_fsc.csv", "fsc_curves.npz", "neighborhood_similarity.csv", "information_imbalance.csv"):
        assert (root / "out1" / f).exists()
    assert "per-conformation AUC mean" in capsys.readouterr().out


def test_evaluate_kmeans_maps_nearest_and_majority(bench):
    root, sd = bench
    for extra, out in ((["--volume-z", root / "kmeans" / "centers.txt"], "out2"),
                       (["--volume-labels", root / "kmeans" / "labels.pkl"], "out3")):
        rc = run(["--dataset", root / "ds", "--z", root / "z.pkl", "--volumes", str(root / "kmeans" / "vol_*.mrc"),
                  "--embedding", "none", "--ns-subsets", "3", "--ii-repeats", "2", *extra, "-o", root / out])
        assert rc == 0
        t = pd.read_csv(root / out / "per_state_fsc.csv")
        assert list(t.volume) == [1, 2, 3] and np.allclose(t.auc, 15 / 32)
        ns = pd.read_csv(root / out / "neighborhood_similarity.csv")
        assert ns.k.max() <= 0.2 * 50 + 1                                    # k as fractions of N / 3 = 50


def test_evaluate_poses_only(bench):
    root, sd = bench
    from cryonb.io import read_poses_pkl
    from scipy.spatial.transform import Rotation
    R, t = read_poses_pkl(root / "ds" / "pose.pkl")
    G = Rotation.from_euler("zyz", [10, 40, -70], degrees=True).as_matrix()
    write_poses_pkl(root / "pred_pose.pkl", R @ G, t)
    assert run(["--dataset", root / "ds", "--poses", root / "pred_pose.pkl", "-o", root / "out4"]) == 0
    m = pd.read_csv(root / "out4" / "metrics.csv").set_index("metric").value
    assert m["rotation error median (deg)"] < 0.01
    js = json.loads((root / "out4" / "metrics.json").read_text())
    fit = np.array(js["pose_fit"]["G"])
    assert np.degrees(np.arccos(np.clip((np.trace(fit.T @ G) - 1) / 2, -1, 1))) < 0.01


def test_mask(bench, capsys):
    root, sd = bench
    k = np.arange(32) - 16
    mask = (np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < 10).astype(np.float32)
    write_map(root / "mask.mrc", mask, 2.5)
    args = ["--dataset", root / "ds", "--volumes", str(root / "kmeans" / "vol_*.mrc"), "--volume-labels",
            root / "kmeans" / "labels.pkl", "--embedding", "none"]
    assert run([*args, "--mask", root / "mask.mrc", "-o", root / "m1"]) == 0
    t = pd.read_csv(root / "m1" / "per_state_fsc.csv")
    assert np.allclose(t.auc, 15 / 32)
    from cryonb import cryobench as cb                        # the masked curve is the FSC of the masked maps
    f, c = cb.fsc_curve(read_map(sd.gt_maps[0])[0] * mask, two_blob(-3.0).numpy() * mask)
    f2, c2 = cb.fsc_curve(read_map(sd.gt_maps[0])[0], two_blob(-3.0).numpy(), mask=mask)
    assert np.allclose(c, c2)
    write_map(root / "mask_bad.mrc", mask[:30, :30, :30], 2.5)
    assert run([*args, "--mask", root / "mask_bad.mrc", "-o", root / "m2"]) == 2
    assert "mask" in capsys.readouterr().err


def test_errors(bench, capsys):
    root, sd = bench
    assert run(["--dataset", root / "nope", "--z", root / "z.npy", "-o", root / "e1"]) == 2
    assert "benchmark folder not found" in capsys.readouterr().err
    assert run(["--dataset", root / "ds", "--z", root / "z.npy", "--volumes", root / "empty*.mrc", "-o", root / "e2"]) == 2
    assert "no .mrc maps" in capsys.readouterr().err
    np.save(root / "zbad.npy", np.zeros((7, 2)))
    assert run(["--dataset", root / "ds", "--z", root / "zbad.npy", "-o", root / "e3"]) == 2
    assert "7 latents but 150 labels" in capsys.readouterr().err
    assert run(["--dataset", root / "ds", "-o", root / "e4"]) == 2
    assert "at least one of" in capsys.readouterr().err


def test_console_script(bench):
    root, _ = bench
    r = subprocess.run([sys.executable, "-m", "cryonb.cli", "cryobench", "evaluate", "-h"], capture_output=True, text=True)
    if r.returncode != 0 or "usage" not in r.stdout:   # `python -m cryonb.cli` may have no __main__ guard
        r = subprocess.run(["cryonb", "cryobench", "evaluate", "-h"], capture_output=True, text=True)
    assert r.returncode == 0 and "--volumes" in r.stdout and "--dataset" in r.stdout
