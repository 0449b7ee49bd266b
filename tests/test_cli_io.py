"""`cryonb info / parse-pose / parse-ctf / downsample` on the fixtures; parity with cryoDRGN 4.3.1's
outputs (pose.star.pkl, ctf1.pkl, pose.cs.pkl, ctf2.pkl) to float32 precision."""
import pickle, subprocess, sys

import numpy as np
import pytest

from cryonb.cli import main
from cryonb import io as cio
from cryonb.synthetic import test_data_path as T

STAR = "FinalRefinement-OriginalParticles-PfCRT.star"
CS = "cryosparc_P12_J24_001_particles.cs"


def ref(name):
    with open(T(name), "rb") as f: return pickle.load(f)


def test_parse_pose_star_reproduces_cryodrgn(tmp_path):
    assert main(["parse-pose", str(T(STAR)), "-D", "300", "-o", str(tmp_path / "p.pkl")]) == 0
    rot, trans = cio.read_pkl(tmp_path / "p.pkl"); rr, rt = ref("pose.star.pkl")
    np.testing.assert_allclose(rot, rr, rtol=0, atol=1e-6)
    np.testing.assert_allclose(trans, rt, rtol=1e-6, atol=1e-9)


def test_parse_ctf_star_reproduces_cryodrgn(tmp_path):
    assert main(["parse-ctf", str(T(STAR)), "-D", "300", "--Apix", "1.035", "-w", "0.1", "-o", str(tmp_path / "c.pkl")]) == 0
    np.testing.assert_array_equal(cio.read_pkl(tmp_path / "c.pkl"), ref("ctf1.pkl"))


def test_parse_pose_cs_reproduces_cryodrgn(tmp_path):
    assert main(["parse-pose", str(T(CS)), "-D", "180", "-o", str(tmp_path / "p.pkl")]) == 0
    rot, trans = cio.read_pkl(tmp_path / "p.pkl"); rr, rt = ref("pose.cs.pkl")
    np.testing.assert_allclose(rot, rr, rtol=0, atol=2e-6)
    np.testing.assert_allclose(trans, rt, rtol=1e-5, atol=1e-7)
    # -D is honoured for .cs files (cryoDRGN ignores it when blob/shape exists)
    assert main(["parse-pose", str(T(CS)), "-D", "90", "-o", str(tmp_path / "p90.pkl")]) == 0
    np.testing.assert_allclose(cio.read_pkl(tmp_path / "p90.pkl")[1], 2 * rt, rtol=1e-5, atol=1e-7)


def test_parse_ctf_cs_reproduces_cryodrgn(tmp_path):
    assert main(["parse-ctf", str(T(CS)), "-o", str(tmp_path / "c.pkl")]) == 0
    np.testing.assert_allclose(cio.read_pkl(tmp_path / "c.pkl"), ref("ctf2.pkl"), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["empiar_10076_7.star", "toy_projections.star", "relion31.star", "empiar_10076_7.cs"])
def test_parse_ctf_never_writes_nan(tmp_path, name):
    assert main(["parse-ctf", str(T(name)), "-o", str(tmp_path / "c.pkl")]) == 0
    c = cio.read_pkl(tmp_path / "c.pkl")
    assert np.isfinite(c).all() and c.shape[1] == 9
    if name == "empiar_10076_7.star":          # no rlnPhaseShift, no rlnImageSize: D from the stack, apix from mag
        assert (c[:, 8] == 0).all() and (c[:, 0] == 320).all()
        np.testing.assert_allclose(c[:, 1], 5e4 / 38168, rtol=1e-6)


def test_parse_errors_are_clear(tmp_path, capsys):
    assert main(["parse-pose", str(T("empiar_10076_7.star")), "-o", str(tmp_path / "p.pkl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryonb parse-pose: error:") and "no poses" in err and "empiar_10076_7.star" in err
    assert main(["parse-ctf", str(T(STAR)), "-D", "300", "-o", str(tmp_path / "c.pkl")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cryonb parse-ctf: error:") and "rlnAmplitudeContrast" in err
    assert not list(tmp_path.iterdir())          # nothing written


FIXTURES = ["FinalRefinement-OriginalParticles-PfCRT.star", "relion31.star", "relion31.v2.star", "relion31.6opticsgroups.star",
            "toy_projections.star", "toy_projections_13.star", "empiar_10076_7.star", "cryosparc_P12_J24_001_particles.cs",
            "empiar_10076_7.cs", "cryosparc_J2_particles_exported.cs", "toy_projections.txt", "toy_projections_2.txt",
            "hand.mrcs", "relion31.mrcs", "empiar_10076_7.mrc", "toymodel_small_nocenter.mrc", "pose.star.pkl",
            "ctf2.pkl", "ind5.pkl", "zvals_het-8_4k.pkl", "toy_angles.pkl", "adk_closed_1ake.pdb"]


def test_info_on_every_fixture(capsys):
    assert main(["info"] + [str(T(f)) for f in FIXTURES]) == 0
    out = capsys.readouterr().out
    assert "optics groups: 6" in out and "139 particles" in out and "2019 particles" in out
    assert main(["info", str(T("relion5.star")), "--datadir", str(T("toy_datadir"))]) == 0
    assert main(["info", str(T("toy_projections_dir.star")), "--datadir", str(T("toy_datadir"))]) == 0


def test_downsample_stack_and_map(tmp_path):
    assert main(["downsample", str(T("hand.mrcs")), "-D", "32", "-o", str(tmp_path / "h.mrcs"), "-b", "30"]) == 0
    y, a = cio.read_stack(tmp_path / "h.mrcs")
    x, _ = cio.read_stack(T("hand.mrcs"))
    assert y.shape == (100, 32, 32) and a == pytest.approx(2.0)
    np.testing.assert_allclose(y.mean(axis=(1, 2)), x.mean(axis=(1, 2)), rtol=1e-4, atol=1e-6)   # mean preserved
    assert main(["downsample", str(T("toymodel_small_nocenter.mrc")), "-D", "20", "-o", str(tmp_path / "v.mrc")]) == 0
    v, av = cio.read_map(tmp_path / "v.mrc")
    v0, _ = cio.read_map(T("toymodel_small_nocenter.mrc"))
    assert v.shape == (20, 20, 20) and av == pytest.approx(1.5)
    assert v.mean() == pytest.approx(v0.mean(), rel=1e-4, abs=1e-6)
    # a star input (two stacks via datadir) becomes one stack, in the star's order
    assert main(["downsample", str(T("toy_projections_dir.star")), "--datadir", str(T("toy_datadir")), "-D", "16",
                 "-o", str(tmp_path / "d.mrcs")]) == 0
    assert cio.read_stack(tmp_path / "d.mrcs")[0].shape == (1000, 16, 16)
    assert main(["downsample", str(T("hand.mrcs")), "-D", "80", "-o", str(tmp_path / "x.mrcs")]) == 2
    assert not (tmp_path / "x.mrcs").exists()


def test_console_script_entry_point(tmp_path):
    r = subprocess.run([sys.executable, "-c", "import sys; from cryonb.cli import main; sys.exit(main(sys.argv[1:]))",
                        "info", str(T("relion31.star"))], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "5 particles" in r.stdout


def test_downsample_relion30_star_with_pixel_origins(tmp_path):
    """RELION 3.0 layout: origins in pixels and apix from detector/magnification must both be rescaled."""
    import shutil
    m0 = cio.load_particles(T("relion31.star"))
    p, o = cio.read_star(T("relion31.star"))
    p = p.drop(columns=["rlnOriginXAngst", "rlnOriginYAngst", "rlnOpticsGroup"])
    p["rlnOriginX"], p["rlnOriginY"] = m0.shifts_px[:, 0], m0.shifts_px[:, 1]
    p["rlnDetectorPixelSize"], p["rlnMagnification"] = 2.806, 10000.0
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"): p[c] = o[c].iloc[0]
    cio.write_star(tmp_path / "r30.star", p)
    shutil.copy(T("relion31.mrcs"), tmp_path)
    assert main(["downsample", str(tmp_path / "r30.star"), "-D", "64", "-o", str(tmp_path / "out" / "d.star")]) == 0
    m1 = cio.load_particles(tmp_path / "out" / "d.star")
    assert m1.D == 64 and m1.apix == pytest.approx(4 * 2.806)
    np.testing.assert_allclose(m1.shifts_A.numpy(), m0.shifts_A.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(m1.shifts_px, m0.shifts_px / 4, rtol=1e-6, atol=1e-9)


def test_downsample_txt_to_star(tmp_path):
    assert main(["downsample", str(T("toy_projections.txt")), "-D", "10", "-o", str(tmp_path / "t.star")]) == 0
    m = cio.load_particles(tmp_path / "t.star")
    assert len(m) == 1000 and m.D == 10 and m.apix == pytest.approx(3.0) and m.optics is not None
