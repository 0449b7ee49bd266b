"""The reconstruction verbs end to end: `cryonb backproject`, `reconstruct`, `fsc`, `postprocess`."""
import os, subprocess, sys
import numpy as np
import pandas as pd
import pytest
import torch

from cryonb.cli import main
from cryonb.core import InputError
from cryonb.geometry import matrix_to_euler
from cryonb.io import read_map, write_map, read_poses_pkl, write_star
from cryonb.synthetic import test_data_path as T
from cryonb.reconstruction import sphere_mask

torch.set_num_threads(1)


def corr(a, b):
    a, b = np.asarray(a, float).ravel(), np.asarray(b, float).ravel()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.fixture(scope="module")
def bp(tmp_path_factory):
    d = tmp_path_factory.mktemp("bp")
    rc = main(["backproject", str(T("toy_projections.mrcs")), "--poses", str(T("toy_angles.pkl")),
               "--ctf", str(T("test_ctf.pkl")), "-o", str(d / "out"), "--device", "cpu"])
    assert rc == 0
    return d / "out"


def test_backproject_writes_cryodrgn_outputs(bp):
    for f in ("backproject.mrc", "half_map_a.mrc", "half_map_b.mrc", "fsc-vals.txt", "fsc-plot.html", "report.html"):
        assert (bp / f).exists(), f
    v, apix = read_map(bp / "backproject.mrc")
    truth, _ = read_map(T("toymodel_small_nocenter.mrc"))
    assert apix == 1.0 and corr(v, truth) > 0.955
    tab = np.loadtxt(bp / "fsc-vals.txt")
    assert tab.shape == (15, 4) and tab[0, 3] == 1.0 and tab[1:, 3].min() > 0.9


def test_backproject_to_mrc_path_subprocess(tmp_path):
    out = tmp_path / "hand.mrc"
    r = subprocess.run([sys.executable, "-c", "import sys; from cryonb.cli import main; sys.exit(main())", "backproject", str(T("hand.mrcs")), "--poses",
                        str(T("hand_rot.pkl")), "-o", str(out), "--device", "cpu", "--no-plot"],
                       capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert "2.00 Å at 0.143" in r.stdout
    for f in ("hand.mrc", "hand_half_map_a.mrc", "hand_half_map_b.mrc", "hand_fsc.txt"):
        assert (tmp_path / f).exists()


def test_reconstruct_from_star_with_angles_subsets_and_ctf(tmp_path):
    # a RELION 3.1 star for the toy stack: Euler angles from toy_angles.pkl, CTF columns, random subsets
    rot, _ = read_poses_pkl(T("toy_angles.pkl"))
    eul = matrix_to_euler(torch.as_tensor(rot, dtype=torch.float64)).numpy()
    n = len(rot)
    os.symlink(T("toy_projections.mrcs"), tmp_path / "toy.mrcs")
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1:06d}@toy.mrcs" for i in range(n)],
                          "rlnAngleRot": eul[:, 0], "rlnAngleTilt": eul[:, 1], "rlnAnglePsi": eul[:, 2],
                          "rlnOriginXAngst": 0.0, "rlnOriginYAngst": 0.0,
                          "rlnDefocusU": 0.0, "rlnDefocusV": 0.0, "rlnDefocusAngle": 0.0, "rlnPhaseShift": 90.0,
                          "rlnRandomSubset": 1 + (np.arange(n) % 2), "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["opticsGroup1"], "rlnImagePixelSize": [1.0],
                           "rlnImageSize": [30], "rlnVoltage": [300.0], "rlnSphericalAberration": [0.001],
                           "rlnAmplitudeContrast": [0.1], "rlnImageDimensionality": [2]})
    star = write_star(tmp_path / "toy.star", parts, optics)
    truth, _ = read_map(T("toymodel_small_nocenter.mrc"))
    assert main(["reconstruct", "--i", str(star), "--o", str(tmp_path / "rec.mrc"), "--ctf", "--device", "cpu"]) == 0
    v, apix = read_map(tmp_path / "rec.mrc")
    assert apix == 1.0 and corr(v, truth) > 0.955
    assert main(["reconstruct", "--i", str(star), "--o", str(tmp_path / "s1.mrc"), "--ctf", "--subset", "1",
                 "--device", "cpu"]) == 0
    assert corr(read_map(tmp_path / "s1.mrc")[0], truth) > 0.9


def test_fsc_and_postprocess(bp, tmp_path, capsys):
    a, b = str(bp / "half_map_a.mrc"), str(bp / "half_map_b.mrc")
    assert main(["fsc", a, a, "-o", str(tmp_path / "self.txt")]) == 0
    np.testing.assert_allclose(np.loadtxt(tmp_path / "self.txt")[:, 3], 1.0, atol=1e-6)
    write_map(tmp_path / "mask.mrc", sphere_mask(30, 10, 3), 1.0)
    assert main(["fsc", a, b, "--mask", str(tmp_path / "mask.mrc"), "-o", str(tmp_path / "m.txt")]) == 0
    assert "at 0.143" in capsys.readouterr().out
    assert np.loadtxt(tmp_path / "m.txt").shape == (15, 7)
    out = tmp_path / "pp"
    assert main(["postprocess", "--i", a, "--i2", b, "--mask", str(tmp_path / "mask.mrc"), "--angpix", "1.0",
                 "--auto_bfac", "-o", str(out) + "/"]) == 0      # a folder (trailing /): RELION's default rootname inside
    for f in ("postprocess.mrc", "postprocess_masked.mrc", "postprocess_fsc.txt", "postprocess.json", "postprocess_fsc.html",
              "postprocess.report.html"):
        assert (out / f).exists(), f
    # RELION's rootname: --o DIR/b writes DIR/b.mrc, DIR/b_fsc.txt, ... next to the first run's files
    assert main(["postprocess", "--i", a, "--i2", b, "--angpix", "1.0", "--adhoc_bfac", "-50", "-o", str(out / "b")]) == 0
    assert (out / "b.mrc").exists() and (out / "b.report.html").exists() and (out / "postprocess.report.html").exists()


def _cli_error(argv, capsys) -> str:
    "Run the CLI expecting bad input: exit code 2 and a one-line message (no traceback) on stderr."
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"cryonb {argv[0]}: error:" in err and "Traceback" not in err, err
    return err

def test_cli_bad_input(bp, tmp_path, capsys):
    a = str(bp / "half_map_a.mrc")
    write_map(tmp_path / "big.mrc", np.zeros((32, 32, 32), np.float32), 1.0)
    assert "box" in _cli_error(["fsc", a, str(tmp_path / "big.mrc")], capsys)
    write_map(tmp_path / "m2.mrc", sphere_mask(30, 10, 3), 2.0)
    assert "pixel size" in _cli_error(["postprocess", "--i", a, "--i2", a, "--mask", str(tmp_path / "m2.mrc"), "-o", str(tmp_path / "x")], capsys)
    nan = read_map(a)[0].copy(); nan[0, 0, 0] = np.nan
    write_map(tmp_path / "nan.mrc", nan, 1.0)
    assert "NaN" in _cli_error(["fsc", a, str(tmp_path / "nan.mrc")], capsys)
    assert "missing.mrc" in _cli_error(["fsc", a, str(tmp_path / "missing.mrc")], capsys)
    # 1000 poses for 100 images
    assert "1000" in _cli_error(["backproject", str(T("hand.mrcs")), "--poses", str(T("toy_angles.pkl")), "-o", str(tmp_path / "y")], capsys)


def test_cli_bad_flags_and_checkpoints(tmp_path, capsys):
    "Flags checked at parse time; a checkpoint of another run is refused naming it, and nothing is written."
    base = ["backproject", str(T("hand.mrcs")), "--poses", str(T("hand_rot.pkl")), "--device", "cpu", "--no-plot"]
    out = tmp_path / "o"
    for bad in (["--checkpoint-every", "0"], ["-b", "0"], ["--apix", "-1"], ["--seed", "-2"], ["--oversampling", "4"],
                ["--reg-weight", "-1"], ["--first", "0"]):
        assert bad[0] in _cli_error(base + bad + ["-o", str(out)], capsys), bad
        assert not out.exists(), bad
    # a job killed with batches of 10 cannot resume with batches of 20: its checkpoint is named and kept
    assert main(base + ["-b", "10", "--checkpoint-every", "10", "--first", "40", "-o", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["backproject.mrc", "fsc-vals.txt", "half_map_a.mrc", "half_map_b.mrc"]
    ck = out / "backproject.ckpt.pt"
    ck.write_bytes(b"not a checkpoint")
    assert "backproject.ckpt.pt" in _cli_error(base + ["-b", "20", "--first", "40", "-o", str(out)], capsys)
    assert ck.read_bytes() == b"not a checkpoint"
