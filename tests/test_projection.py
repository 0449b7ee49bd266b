"""Tests of cryonb.projection: adjointness, Fourier-slice vs real space, peer data (cryoDRGN's toy
and hand stacks), Gaussian-mixture rendering, ImageFormation and bad input."""
import pickle
import warnings
from pathlib import Path

import mrcfile
import numpy as np
import pytest
import roma
import torch

import cryonb.projection as P
from cryonb.core import InputError
from cryonb.ctf import CTFParams, ctf_2d
from cryonb.fourier import fft2c, ifft2c

DATA = Path(__file__).parent / "data"


def _path(name):
    try:
        from cryonb.synthetic import test_data_path
        return Path(test_data_path(name))
    except (ImportError, AttributeError):
        return DATA / name


def read_mrc(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(_path(name), permissive=True) as m:
            return torch.from_numpy(np.array(m.data, dtype=np.float32))


def read_pkl(name):
    with open(_path(name), "rb") as f:
        return torch.from_numpy(np.asarray(pickle.load(f), dtype=np.float32))


def corr(a, b):
    a = a - a.mean((-1, -2), keepdim=True)
    b = b - b.mean((-1, -2), keepdim=True)
    return (a * b).sum((-1, -2)) / (a.norm(dim=(-1, -2)) * b.norm(dim=(-1, -2)))


def rand_rot(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g, dtype=dtype))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.linalg.det(q).sign()[:, None, None]


def gauss_map(D, centres, widths, weights, dtype=torch.float64):
    i = torch.arange(D, dtype=dtype) - D // 2
    z, y, x = torch.meshgrid(i, i, i, indexing="ij")
    return sum(w * torch.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
               for c, s, w in zip(centres, widths, weights))


RZ90 = torch.tensor([[0., -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)


# ---------------------------------------------------------------- adjointness
@pytest.mark.parametrize("D,os_", [(16, 2), (15, 2), (12, 3), (10, 1)])
def test_adjoint_fourier_and_real(D, os_):
    g = torch.Generator().manual_seed(D)
    x = torch.randn(D, D, D, dtype=torch.float64, generator=g)
    R = rand_rot(6, D)
    y = torch.randn(6, D, D, dtype=torch.complex128, generator=g)
    lhs = (P.project_ft(P.prepare_volume(x, os_), R).conj() * y).real.sum()
    rhs = (x * P.backproject(y, R, D, os_)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-10
    yr = torch.randn(6, D, D, dtype=torch.float64, generator=g)
    lhs = (P.project_map(x, R, os_) * yr).sum()
    rhs = (x * P.backproject_images(yr, R, os_)).sum()
    assert abs(lhs - rhs) / abs(lhs) < 1e-10


def test_slice_insert_adjoint_and_chunking(monkeypatch):
    g = torch.randn(20, 20, 20, dtype=torch.complex128)
    R = rand_rot(9, 4)
    y = torch.randn(9, 10, 10, dtype=torch.complex128)
    s_full, i_full = P.slice_grid(g, R, 10), P.insert_grid(y, R, 20)
    assert abs((s_full.conj() * y).sum() - (g.conj() * i_full).sum()) < 1e-10 * abs((s_full.conj() * y).sum())
    monkeypatch.setattr(P, "_chunk", lambda B, *a, **k: 2)    # force 2 images per chunk
    torch.testing.assert_close(P.slice_grid(g, R, 10), s_full)
    torch.testing.assert_close(P.insert_grid(y, R, 20), i_full)


def test_identity_slice_is_grid_plane():
    g = torch.randn(16, 16, 16, dtype=torch.complex128)
    torch.testing.assert_close(P.slice_grid(g, torch.eye(3, dtype=torch.float64), 8)[0], g[8, ::2, ::2])


# ---------------------------------------------------------------- Fourier slice vs real space
def test_fourier_vs_real_space_smooth_map():
    D = 32
    V = gauss_map(D, [(5, 0, 0), (0, -6, 2), (-3, 3, -5)], [2.5, 2.0, 3.0], [1.0, 0.7, 0.5])
    R = rand_rot(12, 11)
    c = corr(P.project_map(V, R), P.project_map_realspace(V, R))
    assert c.min() > 0.999


def test_rotation_about_z_maps_x_to_y():
    D = 32
    V = gauss_map(D, [(6, 0, 0)], [2.0], [1.0])
    for p in (P.project_map(V, RZ90)[0], P.project_map_realspace(V, RZ90)[0]):
        assert divmod(int(p.argmax()), D) == (D // 2 + 6, D // 2)
    img = P.render_gmm_2d(torch.tensor([[6.0, 0, 0]]), torch.ones(1), 2.0, RZ90.float(), D, 1.0)
    assert divmod(int(img.argmax()), D) == (D // 2 + 6, D // 2)


# ---------------------------------------------------------------- peer data
def test_toy_projections_match_cryodrgn_stack():
    vol = read_mrc("toymodel_small_nocenter.mrc")
    imgs, rots = read_mrc("toy_projections.mrcs"), read_pkl("toy_angles.pkl")
    assert imgs.shape == (1000, 30, 30) and rots.shape == (1000, 3, 3)
    c = corr(P.project_map(vol, rots), imgs)
    assert c.min() > 0.9 and c.mean() > 0.99
    # the line-integral normalisation: image sums follow the map sum (toy images sum to ~180 = map sum)
    s = P.project_map(vol, rots[:20]).sum((-1, -2)) / imgs[:20].sum((-1, -2))
    assert ((s - 1).abs() < 0.06).all()
    assert corr(P.project_map(vol, rots[:100].transpose(1, 2)), imgs[:100]).mean() < 0.7
    assert corr(P.project_map(vol.flip(0), rots[:100]), imgs[:100]).mean() < 0.95


def test_hand_stack_consistent_with_poses():
    """Reconstruct hand.mrcs with its poses (insert_grid + weights), reproject, compare: consistent
    with A; inconsistent with Aᵀ (the other convention)."""
    imgs, rots = read_mrc("hand.mrcs").double(), read_pkl("hand_rot.pkl").double()
    D, M = 64, 128

    def recon_reproject(R):
        num = P.insert_grid(fft2c(imgs.to(torch.complex128)), R, M)
        den = P.insert_grid(torch.ones(len(R), D, D, dtype=torch.float64), R, M)
        vol = P.grid_to_volume(num / (den + 1.0), D)
        return corr(P.project_map(vol, R), imgs)

    good, bad = recon_reproject(rots), recon_reproject(rots.transpose(1, 2))
    assert good.mean() > 0.9, good.mean()
    assert bad.mean() < good.mean() - 0.2, (good.mean(), bad.mean())


# ---------------------------------------------------------------- Gaussian mixtures
def test_gmm_render_consistency_and_grad():
    g = torch.Generator().manual_seed(3)
    coords = (torch.rand(20, 3, generator=g, dtype=torch.float64) - 0.5) * 12
    amps = torch.rand(20, generator=g, dtype=torch.float64) + 0.5
    sig = torch.rand(20, generator=g, dtype=torch.float64) + 2.0
    D, apix = 32, 1.2
    R = rand_rot(10, 2)
    img = P.render_gmm_2d(coords, amps, sig, R, D, apix)
    vol = P.render_gmm_3d(coords, amps, sig, D, apix)
    assert torch.allclose(img.sum((-1, -2)), amps.sum().expand(10), rtol=1e-4)
    assert torch.allclose(vol.sum(), amps.sum(), rtol=1e-4)
    assert corr(P.project_map_realspace(vol, R), img).min() > 0.999
    assert ((P.project_map(vol, R) - img).norm() / img.norm()) < 0.02
    c4 = coords[:4].clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda c: P.render_gmm_2d(c, amps[:4], sig[:4], R[:2], 10, apix, cutoff_sigma=None), (c4,))
    assert torch.autograd.gradcheck(lambda c: P.render_gmm_3d(c, amps[:4], sig[:4], 8, apix, cutoff_sigma=None), (c4,))


# ---------------------------------------------------------------- ImageFormation
def test_image_formation_paths_agree():
    coords = torch.tensor([[6.0, 0, 0], [-4, 5, 2], [0, -7, -3]])
    amps = torch.tensor([1.0, 2.0, 0.5])
    D, apix, B = 32, 1.5, 5
    vol = P.render_gmm_3d(coords, amps, 2.5, D, apix)
    R = rand_rot(B, 9).float()
    shifts = torch.randn(B, 2, generator=torch.Generator().manual_seed(9)) * 3    # seeded: beads stay inside the box
    ctf = CTFParams(*[torch.full((B,), v) for v in (12000.0, 11000.0, 10.0, 300.0, 2.7, 0.07)])
    a = P.ImageFormation(D, apix, vol)(R, shifts, ctf)
    b = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, 2.5))(R, shifts, ctf)
    assert ((a - b).norm() / b.norm()) < 0.02
    # the closed-form chain equals CTF and phase ramp applied to the FFT of the real-space render
    ref = ifft2c(ctf_2d(ctf, D, apix) * fft2c(P.render_gmm_2d(coords, amps, 2.5, R, D, apix, shifts_A=shifts))).real
    torch.testing.assert_close(b, ref, rtol=0, atol=1e-5 * ref.abs().max().item())
    # VolumeFT input and parameter input give the same images as the plain map
    c = P.ImageFormation(D, apix, P.prepare_volume(vol))(R, shifts, ctf)
    d = P.ImageFormation(D, apix, P.MapPotential(torch.nn.Parameter(vol.clone())))(R, shifts, ctf)
    torch.testing.assert_close(a, c)
    torch.testing.assert_close(a, d.detach())


def _adk_ca():
    from cryonb.structure import from_pdb, center_coords
    cg = from_pdb(_path("adk_closed_1ake.pdb"), model=0)
    c, _ = center_coords(cg.coords[0].double(), cg.amplitudes.double())
    return c, cg.amplitudes.double(), cg.sigma


def test_per_image_models_match_brute_force_on_adk():
    """Per-image AdK Cα models (214 beads, cryoSTAR's amplitudes and σ = 2 Å): render_gmm_2d, its
    closed-form FT and ImageFormation equal a direct numpy evaluation of cryoSTAR's unnormalised
    separable sum Σ a·exp(−|r − (A s)_xy|²/2σ²) (rescaled by apix²/2πσ²) on every pixel."""
    coords, amps, sigma = _adk_ca()
    N, D, apix, B = coords.shape[0], 48, 2.0, 3
    assert N == 214
    g = torch.Generator().manual_seed(0)
    per = coords + torch.randn(B, N, 3, generator=g, dtype=torch.float64) * 1.5
    R = rand_rot(B, 4)
    x = (np.arange(D) - D // 2) * apix
    c = np.einsum("bij,bnj->bni", R.numpy(), per.numpy())
    d2 = (x[None, None, None, :] - c[:, :, None, None, 0]) ** 2 + (x[None, None, :, None] - c[:, :, None, None, 1]) ** 2
    brute = np.einsum("n,bnyx->byx", amps.numpy(), np.exp(-d2 / (2 * sigma ** 2)))
    brute = brute * apix ** 2 / (2 * np.pi * sigma ** 2)
    img = P.render_gmm_2d(per, amps, sigma, R, D, apix, cutoff_sigma=None)
    np.testing.assert_allclose(img.numpy(), brute, rtol=0, atol=1e-12 * brute.max())
    f = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, sigma, method="real", cutoff_sigma=None))
    np.testing.assert_allclose(f(R, coords=per).numpy(), brute, rtol=0, atol=1e-12 * brute.max())
    # closed form: σ = 1 px here, so aliasing is exp(−π²/2) ≈ 7e-3 of a bead at Nyquist; away from it, exact
    ft = P.render_gmm_2d_ft(per, amps, sigma, R, D, apix)
    fb = fft2c(torch.from_numpy(brute))
    k = (torch.arange(D) - D // 2).double()
    low = (k[:, None] ** 2 + k[None, :] ** 2).sqrt() < D / 4
    torch.testing.assert_close(ft[:, low], fb[:, low], rtol=0, atol=1e-6 * fb.abs().max().item())


def test_image_formation_gradcheck_per_image_coords():
    coords = torch.tensor([[3.0, 0, 1], [-2, 2.5, 0], [0, -3.5, -1.5]], dtype=torch.float64)
    amps = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    B, D, apix = 2, 10, 2.0
    per = (coords + 0.3 * torch.randn(B, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)))
    ctf = CTFParams(*[torch.full((B,), v, dtype=torch.float64) for v in (12000.0, 11000.0, 10.0, 300.0, 2.7, 0.07)])
    sh = torch.tensor([[0.5, -1.0], [1.5, 0.2]], dtype=torch.float64)
    R = rand_rot(B, 1)
    for method in ("fourier", "real"):
        f = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, 2.5, method, cutoff_sigma=None), lowpass_A=5.0)
        assert torch.autograd.gradcheck(lambda c: f(R, sh, ctf, coords=c), (per.clone().requires_grad_(),))


# ---------------------------------------------------------------- bad input
def test_bad_input():
    v = torch.rand(8, 8, 8)
    with pytest.raises(InputError, match="cubic"):
        P.prepare_volume(torch.rand(8, 8, 6))
    with pytest.raises(InputError, match="NaN"):
        P.prepare_volume(torch.full((8, 8, 8), float("nan")))
    with pytest.raises(InputError, match="oversampling"):
        P.prepare_volume(torch.rand(9, 9, 9), 1.5)
    with pytest.raises(InputError, match="rotations"):
        P.project_ft(P.prepare_volume(v), torch.eye(4)[None])
    with pytest.raises(InputError, match="does not match"):
        P.slice_grid(torch.zeros(20, 20, 20, dtype=torch.complex64), torch.eye(3)[None], 8)
    with pytest.raises(InputError, match="poses"):
        P.insert_grid(torch.zeros(3, 8, 8), torch.eye(3).expand(2, 3, 3), 16)
    with pytest.raises(InputError, match="images_ft"):
        P.backproject(torch.zeros(3, 8, 7, dtype=torch.complex64), torch.eye(3).expand(3, 3, 3), 8)
    with pytest.raises(InputError, match="sigma"):
        P.render_gmm_2d(torch.zeros(2, 3), torch.ones(2), -1.0, torch.eye(3)[None], 8, 1.0)
    f = P.ImageFormation(8, 1.0, v)
    with pytest.raises(InputError, match="shifts_A"):
        f(torch.eye(3).expand(3, 3, 3), torch.zeros(2, 2))
    with pytest.raises(InputError, match="box"):
        P.ImageFormation(8, 1.0, torch.rand(6, 6, 6))
    with pytest.raises(InputError, match="coords"):
        f(torch.eye(3)[None], coords=torch.zeros(1, 3))
    with pytest.raises(InputError, match="potential"):
        P.ImageFormation(8, 1.0, "map.mrc")
    for kw, name in (({"f_std": 0.0}, "f_std"), ({"lowpass_A": 0.0}, "lowpass_A"), ({"ctf_sign": 2}, "ctf_sign"),
                     ({"lowpass_soft_px": -1.0}, "lowpass_soft_px")):
        with pytest.raises(InputError, match=name):
            P.ImageFormation(8, 1.0, v, **kw)
    gp = P.GaussianPotential(torch.zeros(4, 3), torch.ones(4), 2.0)
    fg = P.ImageFormation(8, 1.0, gp)
    R3 = torch.eye(3).expand(3, 3, 3)
    with pytest.raises(InputError, match="coords"):
        fg(R3, coords=torch.zeros(3, 5, 3))                     # wrong number of beads
    with pytest.raises(InputError, match="per-image"):
        fg(R3, coords=torch.zeros(2, 4, 3))                     # 2 models for 3 poses
    with pytest.raises(InputError, match="ctf"):
        fg(R3, ctf=torch.ones(3, 6, 6))
    with pytest.raises(InputError, match="coords"):
        P.GaussianPotential(torch.zeros(2, 4, 3), torch.ones(4), 2.0)
    with pytest.raises(InputError, match="method"):
        P.GaussianPotential(torch.zeros(4, 3), torch.ones(4), 2.0, method="fft")
    with pytest.raises(InputError, match="images"):
        P.estimate_f_std(torch.zeros(3, 8, 8))


# ---------------------------------------------------------------- fast paths equal the plain operators
@pytest.mark.parametrize("D", [16, 15])
def test_project_half_plane_equals_full_slice(D):
    g = torch.Generator().manual_seed(1)
    vf = P.prepare_volume(torch.randn(D, D, D, dtype=torch.float64, generator=g))
    R = rand_rot(5, 2)
    full = P.slice_grid(vf.grid, R, D)
    half = P.project_ft(vf, R)
    k = (torch.arange(D) - D // 2).double()
    m = (k[:, None] ** 2 + k[None, :] ** 2).sqrt() < D // 2 - 1      # away from the grid edge
    torch.testing.assert_close(half[:, m], full[:, m], rtol=1e-9, atol=1e-9 * full.abs().max().item())
    # Hermitian inside the band: the real-space images of the band-limited slices are real
    hb = ifft2c(half * m)
    assert hb.imag.abs().max() < 1e-10 * hb.real.abs().max()


def test_insert_hermitian_fast_path():
    D, M = 16, 32
    R = rand_rot(6, 5)
    k = (torch.arange(D) - D // 2).double()
    inner = (k[:, None] ** 2 + k[None, :] ** 2).sqrt() < D // 2 - 1
    y = fft2c(torch.randn(6, D, D, dtype=torch.float64)) * inner
    torch.testing.assert_close(P.hermitian_symmetrize(P.insert_grid(y, R, M, hermitian=True)), P.insert_grid(y, R, M))
    w = (y.abs() ** 2)                                               # CTF²-like even real weights
    torch.testing.assert_close(P.hermitian_symmetrize(P.insert_grid(w, R, M, hermitian=True)), P.insert_grid(w, R, M))


def test_noiseless_reconstruction_recovers_map():
    """Σ insert(Y) / Σ insert(1) from many noiseless projections, then grid_to_volume, gives back the map."""
    D = 24
    V = gauss_map(D, [(4, 0, 0), (0, -5, 2), (-3, 3, -4)], [2.0, 1.6, 2.4], [1.0, 0.7, 0.5]).float()
    R = rand_rot(600, 8).float()
    Y = P.project_ft(P.prepare_volume(V), R)
    num = P.insert_grid(Y, R, 2 * D)
    den = P.insert_grid(torch.ones(600, D, D), R, 2 * D)
    rec = P.grid_to_volume(num / den.clamp_min(1e-3), D)
    c = torch.corrcoef(torch.stack([rec.flatten(), V.flatten()]))[0, 1]
    assert c > 0.99, c


def test_accelerator_scatter_path_matches(monkeypatch):
    "The (re, im)-rows scatter used on GPUs gives the same grid as the complex one used on CPUs."
    R = rand_rot(5, 6)
    y = torch.randn(5, 10, 10, dtype=torch.complex128)
    ref, bp_ref = P.insert_grid(y, R, 20), P.backproject(y, R)
    monkeypatch.setattr(P, "_ROWS_SCATTER", True)
    torch.testing.assert_close(P.insert_grid(y, R, 20), ref)
    torch.testing.assert_close(P.backproject(y, R), bp_ref)


def test_rotations_must_be_proper():
    vf = P.prepare_volume(torch.rand(8, 8, 8))
    mirror = torch.diag(torch.tensor([1.0, 1.0, -1.0]))[None]
    with pytest.raises(InputError, match="proper rotation"):
        P.project_ft(vf, mirror)
    with pytest.raises(InputError, match="proper rotation"):
        P.project_ft(vf, 2 * torch.eye(3)[None])
    with pytest.raises(InputError, match="proper rotation"):
        P.project_ft(vf, torch.full((1, 3, 3), float("nan")))


def test_gradients_wrt_map_match_finite_differences():
    R = rand_rot(2, 12)
    for D in (6, 5):
        v = torch.randn(D, D, D, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda v: P.project_map(v, R), (v,))
    sh = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64)
    v = torch.randn(6, 6, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: P.ImageFormation(6, 1.0, P.MapPotential(v))(R, sh), (v,))


def test_gradients_wrt_pose():
    "Poses can be refined by gradient: through the trilinear weights (map) and analytically (GMM)."
    R = rand_rot(1, 21)
    vf = P.prepare_volume(torch.randn(8, 8, 8, dtype=torch.float64))
    w = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: P.project_ft(vf, roma.rotvec_to_rotmat(w) @ R).real, (w,),
                                    eps=1e-7, atol=1e-4)
    c = torch.tensor([[3.0, -2.0, 1.0], [-1.0, 2.5, 0.0]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda w: P.render_gmm_2d(c, torch.ones(2, dtype=torch.float64), 1.5, roma.rotvec_to_rotmat(w) @ R, 12, 1.0,
                                  cutoff_sigma=None), (w,))
