"""Reconstruction correctness against data we did not make (cryoDRGN fixtures in tests/data) and
analytic identities; bad input gives clear errors."""
import math
import numpy as np
import pytest
import torch

from cryonb import fourier as F
from cryonb.core import InputError
from cryonb.ctf import CTFParams
from cryonb.data import ParticleDataset
from cryonb.geometry import random_rotations
from cryonb.io import read_map, write_map
from cryonb.synthetic import test_data_path as T
from cryonb.projection import prepare_volume, project_ft, project_map_realspace
from cryonb.reconstruction import (Reconstructor, reconstruct_dataset, sphere_mask, load_mask, masked_fsc,
                                   fsc_shell_counts, postprocess, mask_from_halfmaps)

torch.set_num_threads(1)


def corr(a, b):
    a, b = a.double().flatten(), b.double().flatten()
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / (a.norm() * b.norm()))


@pytest.fixture(scope="module")
def toy():
    ds = ParticleDataset(T("toy_projections.mrcs"), poses=T("toy_angles.pkl"), ctf=T("test_ctf.pkl"))
    return ds, reconstruct_dataset(ds, batch_size=250, device="cpu")


def test_toy_matches_ground_truth_better_than_cryodrgn(toy):
    ds, r = toy
    truth = torch.as_tensor(read_map(T("toymodel_small_nocenter.mrc"))[0])
    assert corr(r["map"], truth) > 0.955                    # cryoDRGN backproject_voxel: 0.955
    assert corr(r["map"].flip(0), truth) < 0.5              # the mirror image does not fit: hand kept
    assert corr(r["map"].flip(2), truth) < 0.5
    assert corr(-r["map"], truth) < 0                       # CTF sign: +0.995 in our convention, no inversion
    _, c = F.fsc(r["map"], truth)
    assert c[1:].min() > 0.95


def test_toy_star_path_same_as_mrcs(toy):
    # the RELION 3.0 star has the same CTF (defocus 0, 90° phase shift) but no angles: poses from the pkl
    ds = ParticleDataset(T("toy_projections.star"), poses=T("toy_angles.pkl"), apix=1.0)
    r = reconstruct_dataset(ds, batch_size=500, device="cpu", seed=0)
    torch.testing.assert_close(r["map"], toy[1]["map"], atol=1e-4 * float(toy[1]["map"].abs().max()), rtol=0)


def test_hand_half_map_fsc_reaches_nyquist_and_hand_is_kept():
    ds = ParticleDataset(T("hand.mrcs"), poses=T("hand_rot.pkl"))
    r = reconstruct_dataset(ds, batch_size=64, device="cpu", ctf=False)
    assert r["resolution_A"] == 2.0 and float(r["fsc"][1:].min()) > 0.143
    b = ds[np.arange(0, 100, 7)]
    # independent check of the hand: re-project with the real-space projector (no shared Fourier code)
    cc = corr(project_map_realspace(r["map"], b["rotations"]), b["images"])
    cc_mirror = corr(project_map_realspace(r["map"].flip(0), b["rotations"]), b["images"])
    assert cc > 0.98 and cc_mirror < 0.6


def _bandlimited_map(D, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.arange(D, dtype=torch.float64) - D // 2
    r = torch.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + x[None, None, :] ** 2)
    env = 0.5 * (1 + torch.cos(math.pi * ((r - D / 4) / 3).clamp(0, 1)))
    v = torch.randn(D, D, D, generator=g, dtype=torch.float64).float() * env.float()
    return F.filter_real(v, F.lowpass_mask(D, 1.0, 2 / 0.9, ndim=3))


@pytest.mark.parametrize("oversampling,floor", [(2, 0.99), (1, 0.9)])
def test_noiseless_projections_recover_the_map(oversampling, floor):
    # oversampling 2 (default for dense data) meets the FSC >= 0.99 to 0.9 Nyquist; the
    # unpadded grid (sparse-data mode) interpolates less accurately
    D = 32
    vol = _bandlimited_map(D)
    R = random_rotations(800, seed=2)
    imgs = F.ifft2c(project_ft(prepare_volume(vol), R)).real
    r = Reconstructor(D, 1.0, oversampling=oversampling, device="cpu").add(imgs, R).finalize()
    _, c = F.fsc(r["map"], vol)
    assert c[: int(0.9 * D / 2) + 1].min() >= floor
    assert abs(float((r["map"] * vol).sum() / (vol * vol).sum()) - 1) < 0.03


def test_fsc_identities():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(40, 40, 40, generator=g), torch.randn(40, 40, 40, generator=g)
    _, c = F.fsc(a, a)
    torch.testing.assert_close(c, torch.ones_like(c))
    _, c = F.fsc(a, b)
    n = fsc_shell_counts(40).double()
    assert (c[2:].abs() <= 3 / n[2:].sqrt()).all()


def test_fsc_regulariser_lowers_the_error_on_noisy_ctf_data():
    # the Wiener/FSC estimate minimises the mean squared error; the plain ratio amplifies noise near CTF zeros
    from cryonb.ctf import ctf_2d
    D, n = 24, 400
    vol = _bandlimited_map(D, 3)
    R = random_rotations(n, seed=4)
    g = torch.Generator().manual_seed(5)
    ctf = CTFParams(defocus_u=torch.full((n,), 15000.), defocus_v=torch.full((n,), 14000.), defocus_angle=torch.zeros(n),
                    voltage=torch.full((n,), 300.), cs=torch.full((n,), 2.7), amplitude_contrast=torch.full((n,), 0.1))
    imgs = F.ifft2c(project_ft(prepare_volume(vol), R) * ctf_2d(ctf, D, 2.0)).real
    imgs = imgs + 5 * imgs.std() * torch.randn(imgs.shape, generator=g)
    rec = Reconstructor(D, 2.0, oversampling=1, device="cpu").add(imgs, R, None, ctf)
    err = {reg: float((rec.finalize(reg)["map"] - vol).norm() / vol.norm()) for reg in ("fsc", None)}
    assert err["fsc"] < 0.8 * err[None], err


# ------------------------------------------------------------------ bad input
def test_bad_boxes_and_counts(tmp_path):
    with pytest.raises(InputError, match="even"):
        Reconstructor(31, 1.0)
    rec = Reconstructor(30, 1.0, device="cpu")
    ds = ParticleDataset(T("hand.mrcs"), poses=T("hand_rot.pkl"))
    b = ds[np.arange(4)]
    with pytest.raises(InputError, match="match D=30"):
        rec.add(b["images"], b["rotations"])
    with pytest.raises(ValueError, match="(?i)pose|rot|100|1000"):
        ParticleDataset(T("hand.mrcs"), poses=T("toy_angles.pkl"))             # 1000 poses for 100 images
    with pytest.raises(ValueError, match="(?i)ctf|1000|100"):
        ParticleDataset(T("hand.mrcs"), poses=T("hand_rot.pkl"), ctf=T("test_ctf.pkl"))


def test_bad_masks_and_maps(tmp_path):
    m = sphere_mask(16, 5, 2)
    write_map(tmp_path / "m.mrc", m, 2.0)
    with pytest.raises(InputError, match="box"):
        load_mask(tmp_path / "m.mrc", 32, 2.0)
    with pytest.raises(InputError, match="pixel size"):
        load_mask(tmp_path / "m.mrc", 16, 1.0)
    h = torch.randn(16, 16, 16)
    bad = h.clone(); bad[1, 2, 3] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        postprocess(h, bad, 1.0)
    with pytest.raises(InputError, match="box"):
        masked_fsc(h, h, sphere_mask(18, 5))
    with pytest.raises(InputError):
        mask_from_halfmaps(h, torch.randn(18, 18, 18))
