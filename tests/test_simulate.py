"""Tests of cryonb.simulate: files read back through cryonb.io/cryonb.data, forward-model conventions
against an independent SciPy projection, measured SNR, B-factor envelope, junk particles, CLI, and a
cryoDRGN cross-check when cryoDRGN is installed."""
import json, math, os
from pathlib import Path
import numpy as np
import pytest
import torch
import scipy.ndimage as ndi

os.environ.setdefault("OMP_NUM_THREADS", "1")
from cryonb.synthetic import test_data_path
from cryonb import io as cio
from cryonb.ctf import ctf_2d
from cryonb.fourier import fft2c, ifft2c, freq_grid_2d
from cryonb.geometry import euler_to_matrix, geodesic_angle
from cryonb.projection import render_gmm_3d
from cryonb.simulate import simulate_dataset, signal_std

ADK = Path(__file__).resolve().parents[1] / "cryonb" / "data" / "adk"
D, APIX = 32, 2.0


def _maps(k=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(k):
        c = torch.randn(10, 3, generator=g) * 7
        out.append(render_gmm_3d(c, torch.rand(10, generator=g) + 0.5, 3.0, D, APIX))
    return torch.stack(out)


def _stack(ds):
    return np.concatenate([cio.read_stack(p, mmap=False)[0].reshape(-1, ds.D, ds.D) for p in ds.stacks])


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    td = tmp_path_factory.mktemp("sim")
    maps = _maps()
    ds = simulate_dataset(maps, td / "noisy", n_per_state=60, apix=APIX, snr=0.05, seed=7, max_shift_px=3,
                          images_per_file=50, chunk_size=32, bfactor=40.0)
    clean = simulate_dataset(maps, td / "clean", n_per_state=60, apix=APIX, snr=None, seed=7, max_shift_px=3,
                             images_per_file=50, chunk_size=32, bfactor=40.0)
    return maps, ds, clean


def test_read_back_through_io_and_data(small):
    maps, ds, _ = small
    meta = cio.load_particles(ds.star)
    assert len(meta) == 120 and meta.D == D and abs(meta.apix - APIX) < 1e-6
    rot, trans = cio.read_poses_pkl(ds.poses)
    torch.testing.assert_close(meta.rotations, torch.as_tensor(rot), atol=1e-4, rtol=0)
    torch.testing.assert_close(meta.shifts_A, torch.as_tensor(trans * D * APIX), atol=1e-4, rtol=0)
    ctf = cio.read_ctf_pkl(ds.ctf)
    c = meta.ctf
    np.testing.assert_allclose(ctf[:, 2], c.defocus_u.numpy(), atol=0.05)
    np.testing.assert_allclose(ctf[:, 3], c.defocus_v.numpy(), atol=0.05)
    np.testing.assert_allclose(ctf[:, 4], c.defocus_angle.numpy(), atol=1e-3)
    assert (ctf[:, 0] == D).all() and np.allclose(ctf[:, 1], APIX)
    assert np.allclose(c.bfactor.numpy(), 40.0)
    # images via the star's NNN@file names (3 stacks of ≤ 50) equal the files in order
    imgs = cio.read_images(meta)
    np.testing.assert_array_equal(imgs, _stack(ds))
    # ParticleDataset on the txt list with the pkls gives the same poses and CTF
    from cryonb.data import ParticleDataset
    pd_ = ParticleDataset(ds.out_dir / "particles.txt", poses=ds.poses, ctf=ds.ctf, labels=ds.labels)
    b = pd_[np.arange(120)]
    torch.testing.assert_close(b["rotations"], meta.rotations, atol=1e-4, rtol=0)
    torch.testing.assert_close(b["shifts"], meta.shifts_A, atol=1e-3, rtol=0)
    torch.testing.assert_close(b["ctf"].defocus_u, c.defocus_u, atol=0.1, rtol=0)
    np.testing.assert_array_equal(b["label"].numpy(), np.repeat([0, 1], 60))
    np.testing.assert_allclose(b["images"].numpy(), imgs, atol=1e-6)
    p = json.loads(ds.params.read_text())
    assert p["seed"] == 7 and p["n_images"] == 120 and len(p["noise_std"]) == 2


def test_images_match_independent_projection(small):
    """Noise-free written images vs. a SciPy real-space projection of the written ground-truth map at
    the star file's Euler angles and origins, with the CTF applied: checks every file convention."""
    _, _, clean = small
    meta = cio.load_particles(clean.star)
    imgs = cio.read_images(meta)
    for i in [0, 7, 64, 119]:
        vol = cio.read_map(clean.gt_maps[int(np.load(clean.labels)[i])])[0].astype(np.float64)
        A = meta.rotations[i].double().numpy()
        P = np.eye(3)[::-1]; M = P @ A.T @ P; c = np.full(3, D // 2, float)
        im = ndi.affine_transform(vol, M, offset=c - M @ c, order=3).sum(0)
        o = meta.shifts_A[i].double().numpy() / APIX
        im = ndi.shift(im, (-o[1], -o[0]), order=3, mode="wrap")
        ref = ifft2c(fft2c(torch.from_numpy(im)) * ctf_2d(meta.ctf[i].to(dtype=torch.float64), D, APIX))[0].real
        got = torch.from_numpy(imgs[i]).double()
        assert (got - ref).norm() / ref.norm() < 0.05
        # the wrong sign of the shift or of the CTF would fail
        assert torch.corrcoef(torch.stack([got.ravel(), ref.ravel()]))[0, 1] > 0.99


def test_snr_measured(small):
    _, ds, clean = small
    x, y = _stack(ds).astype(np.float64), _stack(clean).astype(np.float64)
    lab = np.load(ds.labels)
    for k in range(2):
        s = lab == k
        snr = y[s].var() / (x[s] - y[s]).var()
        assert abs(snr / 0.05 - 1) < 0.03, snr
        # the noise is white: its mean power is flat across frequency
        n = torch.from_numpy(x[s] - y[s])
        pw = (fft2c(n).abs() ** 2).mean(0)
        lo, hi = pw[D // 2 - 3:D // 2 + 4, D // 2 - 3:D // 2 + 4].mean(), pw[:4, :4].mean()
        assert abs(lo / hi - 1) < 0.15


def test_snr_mask_and_cryobench_box(tmp_path):
    maps = _maps(1)
    kw = dict(n_per_state=80, apix=APIX, seed=3, chunk_size=40)
    a = simulate_dataset(maps, tmp_path / "m", snr=0.1, snr_mask_radius=8, **kw)
    a0 = simulate_dataset(maps, tmp_path / "m0", snr=None, **kw)
    x, y = torch.from_numpy(_stack(a)).double(), torch.from_numpy(_stack(a0)).double()
    k = torch.arange(D) - D // 2
    m = (k[:, None] ** 2 + k[None, :] ** 2) <= 64
    assert abs(y[:, m].var() / (x - y)[:, m].var() / 0.1 - 1) < 0.05
    # CryoBench's definition: SNR set at the 32-px simulation box, images then cropped to 16 px
    kw16 = dict(n_per_state=80, D=16, apix=2 * APIX, seed=3, chunk_size=40)
    b = simulate_dataset(maps, tmp_path / "s", snr=0.1, snr_box="simulation", **kw16)
    b0 = simulate_dataset(maps, tmp_path / "s0", snr=None, **kw16)
    x, y = _stack(b).astype(np.float64), _stack(b0).astype(np.float64)
    measured = y.var() / (x - y).var()
    assert 2.5 < measured / 0.1 < 4.5        # ≈ (32/16)² × the label, minus the signal lost in the crop
    c = simulate_dataset(maps, tmp_path / "o", snr=0.1, snr_box="output", **kw16)
    assert abs(y.var() / (_stack(c).astype(np.float64) - y).var() / 0.1 - 1) < 0.05


def test_bfactor_envelope_in_written_images(tmp_path):
    maps = _maps(1)
    kw = dict(n_per_state=6, apix=APIX, snr=None, seed=11, defocus_range=(15000, 15000), astigmatism=0)
    a = simulate_dataset(maps, tmp_path / "b0", bfactor=0.0, **kw)
    b = simulate_dataset(maps, tmp_path / "b150", bfactor=150.0, **kw)
    F0, F1 = fft2c(torch.from_numpy(_stack(a)).double()), fft2c(torch.from_numpy(_stack(b)).double())
    s2 = (freq_grid_2d(D, APIX, dtype=torch.float64) ** 2).sum(-1).expand_as(F0)
    ok = F0.abs() > 1e-3 * F0.abs().max()
    B = -4 * ((F1.abs()[ok] / F0.abs()[ok]).log() * s2[ok]).sum() / (s2[ok] ** 2).sum()
    assert abs(B.item() - 150.0) < 1.0
    assert cio.read_star(b.star)[0]["rlnCtfBfactor"].eq(150.0).all()


def test_junk_particles(tmp_path):
    maps = _maps(1)
    ds = simulate_dataset(maps, tmp_path / "j", n_per_state=100, apix=APIX, snr=None, seed=5,
                          junk_fraction=0.3, junk_kind="mixed")
    junk, kind = np.load(ds.junk), np.load(ds.out_dir / "junk_kind.npy")
    assert junk.sum() == 30 and set(np.unique(kind[junk])) == {1, 2, 3} and (kind[~junk] == 0).all()
    x = _stack(ds)
    assert np.abs(x[kind == 1]).max() == 0                      # noise-only particles hold no signal
    good = simulate_dataset(maps, tmp_path / "g", n_per_state=100, apix=APIX, snr=None, seed=5)
    y = _stack(good)                                             # same poses/CTFs, no junk
    np.testing.assert_allclose(x[kind == 0], y[kind == 0], atol=1e-5)
    for k in (2, 3):                                             # wrong pose / wrong structure: unlike the recorded one
        cc = [np.corrcoef(x[i].ravel(), y[i].ravel())[0, 1] for i in np.nonzero(kind == k)[0]]
        assert np.median(cc) < 0.9
    with pytest.raises(ValueError, match="junk_kind"):
        simulate_dataset(maps, tmp_path / "bad", 4, apix=APIX, junk_fraction=0.1, junk_kind="bogus")


def test_atomic_models_both_renderings(tmp_path):
    pdbs = [ADK / "adk_closed_1ake.pdb", ADK / "adk_open_4ake.pdb"]
    a = simulate_dataset(pdbs, tmp_path / "pot", n_per_state=4, D=64, apix=1.5, snr=0.1, seed=0)
    g = simulate_dataset(pdbs, tmp_path / "gau", n_per_state=4, D=64, apix=1.5, snr=0.1, seed=0, model_to_map="gaussian")
    for ds in (a, g):
        assert ds.D == 64 and len(ds.gt_maps) == 2 and np.load(ds.labels).tolist() == [0] * 4 + [1] * 4
    from cryonb.fourier import lowpass_mask, filter_real
    lp = lambda v: filter_real(torch.from_numpy(v).double(), lowpass_mask(64, 1.5, 8.0, ndim=3).double()).numpy().ravel()
    va, vg = cio.read_map(a.gt_maps[1])[0], cio.read_map(g.gt_maps[1])[0]
    same = np.corrcoef(lp(va), lp(vg))[0, 1]                       # the open state, two density models, at 8 Å
    other = np.corrcoef(lp(va), lp(cio.read_map(g.gt_maps[0])[0]))[0, 1]
    assert same > 0.9 and other < same - 0.1, (same, other)
    assert abs(vg.sum() - 10935) < 5                                 # electrons of AdK (heavy atoms)
    # simulate at 128 px and crop to 64 px: pixel size doubles in the files
    c = simulate_dataset([pdbs[0]], tmp_path / "crop", n_per_state=2, D=32, apix=3.0, sim_D=64, snr=None, seed=0)
    assert cio.read_stack(c.stacks[0])[0].shape == (2, 32, 32) and abs(cio.read_map(c.gt_maps[0])[1] - 3.0) < 1e-4


def test_ctf_table_without_replacement(tmp_path):
    maps = _maps(1)
    src = simulate_dataset(maps, tmp_path / "t", n_per_state=30, apix=APIX, snr=None, seed=1)
    ds = simulate_dataset(maps, tmp_path / "u", n_per_state=30, apix=APIX, snr=None, seed=2, ctf_table=src.ctf)
    a, b = cio.read_ctf_pkl(src.ctf), cio.read_ctf_pkl(ds.ctf)
    assert sorted(a[:, 2].tolist()) == sorted(b[:, 2].tolist()) and not np.array_equal(a[:, 2], b[:, 2])
    with pytest.raises(ValueError, match="replace"):
        simulate_dataset(maps, tmp_path / "v", n_per_state=31, apix=APIX, ctf_table=src.ctf)
    star = simulate_dataset(maps, tmp_path / "w", n_per_state=10, apix=APIX, snr=None, ctf_table=src.star)
    assert set(cio.read_ctf_pkl(star.ctf)[:, 2].tolist()) <= set(a[:, 2].tolist())


def test_cli(tmp_path):
    from cryonb.cli import main
    maps = _maps(1)
    cio.write_map(tmp_path / "m.mrc", maps[0], APIX)
    assert main(["simulate", str(tmp_path / "m.mrc"), "-o", str(tmp_path / "o"), "-n", "5", "--snr", "0.1",
                 "--bfactor", "20", "--seed", "2"]) == 0
    p = json.loads((tmp_path / "o" / "params.json").read_text())
    assert p["bfactor"] == 20 and p["n_images"] == 5 and p["seed"] == 2
    assert main(["simulate", str(tmp_path / "nope.mrc"), "-o", str(tmp_path / "x")]) == 2


def _cryodrgn_exe():
    import shutil
    exe = os.environ.get("CRYONB_CRYODRGN") or shutil.which("cryodrgn")    # e.g. a separate venv's bin/cryodrgn
    if exe is None or not Path(exe).exists(): pytest.skip("cryodrgn not installed (set CRYONB_CRYODRGN to its executable)")
    return Path(exe)


def test_cryodrgn_reads_our_files(small, tmp_path):
    "Cross-tool: cryoDRGN's own loaders (in its own interpreter) on our pose.pkl / ctf.pkl (skipped when absent)."
    import subprocess
    py = _cryodrgn_exe().parent / "python"
    _, _, clean = small
    code = ("import sys, numpy as np; from cryodrgn import utils, ctf; "
            "r, t = utils.load_pkl(sys.argv[1]); c = ctf.load_ctf_for_training(%d, sys.argv[2]); "
            "np.save(sys.argv[3], np.concatenate([r.reshape(len(r), 9), t, c], 1))" % D)
    out = tmp_path / "cd.npy"
    res = subprocess.run([str(py), "-c", code, str(clean.poses), str(clean.ctf), str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
    a = np.load(out)
    meta = cio.load_particles(clean.star)
    np.testing.assert_allclose(a[:, :9].reshape(-1, 3, 3), meta.rotations.numpy(), atol=1e-5)
    np.testing.assert_allclose(a[:, 9:11] * D * APIX, meta.shifts_A.numpy(), atol=1e-4)
    np.testing.assert_allclose(a[:, 11], APIX, rtol=1e-5)                       # cryoDRGN's Apix column
    np.testing.assert_allclose(a[:, 12], meta.ctf.defocus_u.numpy(), atol=0.1)


def test_ctf_tables_from_real_files():
    "Experimental CTF tables (cryoDRGN fixtures): a ctf.pkl, a RELION star and a cryoSPARC .cs."
    from cryonb.simulate import sample_ctf, load_ctf_table
    pkl, star = test_data_path("ctf1.pkl"), test_data_path("FinalRefinement-OriginalParticles-PfCRT.star")
    cs, cs_pkl = test_data_path("cryosparc_P12_J24_001_particles.cs"), test_data_path("ctf2.pkl")
    t_pkl = load_ctf_table(pkl)
    with pytest.raises(ValueError, match="amplitude_contrast"):
        load_ctf_table(star)                                     # this star has no rlnAmplitudeContrast
    with pytest.warns(UserWarning, match="amplitude_contrast"):
        t_star = load_ctf_table(star, fill={"amplitude_contrast": 0.1})
    assert np.allclose(t_star.amplitude_contrast.numpy(), 0.1)
    np.testing.assert_allclose(t_pkl.defocus_u.numpy(), t_star.defocus_u.numpy(), rtol=1e-5)   # ctf1.pkl came from this star
    t_cs = load_ctf_table(cs)
    np.testing.assert_allclose(t_cs.defocus_u.numpy(), cio.read_ctf_pkl(cs_pkl)[:, 2], rtol=1e-5)
    n = min(len(t_cs), 50)
    s = sample_ctf(n, table=cs, seed=4, bfactor=10.0)
    assert len(set(s.defocus_u.tolist())) == len(set(t_cs.defocus_u[torch.as_tensor(
        np.isin(t_cs.defocus_u.numpy(), s.defocus_u.numpy()))].tolist()))
    assert set(s.defocus_u.tolist()) <= set(t_cs.defocus_u.tolist()) and (s.bfactor == 10.0).all()


def test_cryodrgn_backproject_voxel_on_our_files(tmp_path):
    """Cross-tool (issue 4): cryoDRGN's `backproject_voxel` with its defaults (data inverted, cryoDRGN-sign
    CTF) on our .mrcs + pose.pkl + ctf.pkl reproduces the ground truth with a positive correlation.
    Skipped when cryoDRGN is not installed."""
    import subprocess
    exe = _cryodrgn_exe()
    maps = _maps(1)
    ds = simulate_dataset(maps, tmp_path / "d", n_per_state=600, apix=APIX, snr=None, seed=1, max_shift_px=2)
    r = subprocess.run([exe, "backproject_voxel", str(ds.stacks[0]), "--poses", str(ds.poses), "--ctf", str(ds.ctf),
                        "-o", str(tmp_path / "bp")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = sorted((tmp_path / "bp").rglob("backproject*.mrc")) or sorted(tmp_path.glob("bp*.mrc"))
    vol = cio.read_map(out[0])[0]
    gt = cio.read_map(ds.gt_maps[0])[0]
    cc = np.corrcoef(vol.ravel(), gt.ravel())[0, 1]
    assert cc > 0.8, cc
