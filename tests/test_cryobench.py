"""CryoBench metrics (cryonb.cryobench): FSC/AUC/resolution against an independent transcription
of CryoBench's formula and analytic identities, latent metrics on embeddings with known answers,
pose error on planted rotations, and the benchmark-folder round trip with cryonb.simulate."""
import json

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from cryonb import cryobench as cb
from cryonb.core import InputError
from cryonb.io import read_map, write_poses_pkl
from cryonb.synthetic import test_data_path as T


# ---------------------------------------------------------------- independent FSC reference
def fsc_reference(v1, v2, mask=None):
    """CryoBench's FSC written from the definition (numpy float64, explicit shell loop):
    fftshift -> fftn -> fftshift, shells s-1 <= |k| < s for s = 1..D/2-1, FSC(0) = 1, 1 if the
    denominator vanishes, shell s labelled s/D."""
    v1, v2 = np.asarray(v1, np.float64), np.asarray(v2, np.float64)
    if mask is not None: v1, v2 = v1 * mask, v2 * mask
    D = v1.shape[0]
    F1 = np.fft.fftshift(np.fft.fftn(np.fft.fftshift(v1)))
    F2 = np.fft.fftshift(np.fft.fftn(np.fft.fftshift(v2)))
    k = np.arange(-(D // 2), D - D // 2)
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    out = [1.0]
    for s in range(1, D // 2):
        sel = (r >= s - 1) & (r < s)
        num = np.real(np.sum(np.conj(F1[sel]) * F2[sel]))
        den = np.sqrt(np.sum(np.abs(F1[sel]) ** 2) * np.sum(np.abs(F2[sel]) ** 2))
        out.append(num / den if den > 0 else 1.0)
    return np.arange(D // 2) / D, np.array(out)


def radius(D):
    k = np.arange(D) - D // 2
    return np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)


def lowpass(x, r, noise):
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(np.asarray(x, np.float64))))
    return np.real(np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(F * (radius(len(x)) < r))))) + noise


@pytest.fixture(scope="module")
def toy():
    "A real map (cryoDRGN test fixture, 30^3) and a noisy copy."
    v, _ = read_map(T("toymodel_small_nocenter.mrc"))
    rng = np.random.default_rng(0)
    return v, v + 0.05 * rng.standard_normal(v.shape).astype(np.float32)


def test_fsc_matches_reference_on_real_map(toy):
    v, w = toy
    f, c = cb.fsc_curve(v, w)
    fr, cr = fsc_reference(v, w)
    assert f.shape == (15,) and np.allclose(f, fr) and np.allclose(c, cr, atol=1e-10)
    mask = (radius(30) < 12).astype(np.float32)
    f, c = cb.fsc_curve(v, w, mask=mask)
    assert np.allclose(c, fsc_reference(v, w, mask)[1], atol=1e-10)
    # torch input on any device and file paths are accepted
    f2, c2 = cb.fsc_curve(torch.as_tensor(v), T("toymodel_small_nocenter.mrc"))
    assert np.allclose(c2, 1.0)


@pytest.mark.parametrize("D", [32, 64, 128])
def test_self_fsc_gives_ideal_auc(D):
    v = np.random.default_rng(D).standard_normal((D, D, D)).astype(np.float32)
    m = cb.fsc_metrics(v, v, apix=3.0)
    assert np.allclose(cb.fsc_curve(v, v)[1], 1.0)
    assert m["auc"] == pytest.approx((D / 2 - 1) / D, abs=1e-12)
    assert m["res_0.5_px"] == 2.0 and m["res_0.143_A"] == 6.0          # never crosses -> Nyquist
    if D == 128: assert m["auc"] == pytest.approx(0.4921875)            # CryoBench's "≈0.492"


def test_shifted_copy():
    D = 32
    v = np.random.default_rng(1).standard_normal((D, D, D))
    aucs = [cb.fsc_metrics(v, np.roll(v, s, axis=2))["auc"] for s in (0, 1, 2, 4)]
    assert all(a > b for a, b in zip(aucs, aucs[1:])), aucs
    # analytic: shell FSC = power-weighted mean of cos(2π kx s / D)
    F = np.fft.fftshift(np.fft.fftn(np.fft.fftshift(v))); P = np.abs(F) ** 2
    kx = (np.arange(D) - D // 2)[None, None, :]
    sh = np.floor(radius(D)).astype(int) + 1
    cosx = np.broadcast_to(np.cos(2 * np.pi * kx * 1 / D), P.shape)
    expect = [1.0] + [(P * cosx)[sh == s].sum() / P[sh == s].sum() for s in range(1, D // 2)]
    assert np.allclose(cb.fsc_curve(v, np.roll(v, 1, axis=2))[1], expect, atol=1e-9)


def test_lowpassed_copy_auc_monotone_in_cutoff():
    D = 32
    rng = np.random.default_rng(2)
    v = rng.standard_normal((D, D, D))
    noise = 1e-3 * rng.standard_normal((D, D, D))   # an empty shell's FSC is round-off / round-off
    cut = [2, 4, 6, 8, 10, 12, 14]
    aucs = [cb.fsc_metrics(v, lowpass(v, r, noise))["auc"] for r in cut]
    assert all(a < b for a, b in zip(aucs, aucs[1:])), aucs
    for r, a in zip(cut, aucs):   # curve = 1 for shells s <= r, ~0 beyond: trapezoid by hand
        ideal = np.trapezoid(np.r_[np.ones(r + 1), np.zeros(D // 2 - r - 1)], np.arange(D // 2) / D)
        assert ideal - 1e-4 < a < ideal + 0.01
        f, c = cb.fsc_curve(v, lowpass(v, r, noise))
        assert cb.fsc_resolution_px(f, c, 0.5) == pytest.approx(D / (r + 1))


def test_resolution_and_auc_conventions():
    f = np.arange(16) / 32
    c = np.array([1, .99, .9, .8, .6, .51, .49, .3, .2, .15, .14, .1, -.2, .05, .0, -.1])
    assert cb.fsc_resolution_px(f, c, 0.5) == pytest.approx(32 / 6)     # first shell below, no interpolation
    assert cb.fsc_resolution_px(f, c, 0.143) == pytest.approx(32 / 10)
    c2 = c.copy(); c2[2] = 0.4                                            # first crossing, not last
    assert cb.fsc_resolution_px(f, c2, 0.5) == pytest.approx(32 / 2)
    assert cb.fsc_auc_cryobench(f, c, "raw") == pytest.approx(np.trapezoid(c, f))
    assert cb.fsc_auc_cryobench(f, c, "clip") == pytest.approx(np.trapezoid(np.clip(c, 0, 1), f))
    assert cb.fsc_auc_cryobench(f, c, "abs") == pytest.approx(np.trapezoid(np.abs(c), f))
    with pytest.raises(InputError, match="mode"): cb.fsc_auc_cryobench(f, c, "bogus")


def test_fsc_bad_input():
    v = np.zeros((8, 8, 8))
    with pytest.raises(InputError, match="cubic"): cb.fsc_curve(v, np.zeros((8, 8, 7)))
    with pytest.raises(InputError): cb.fsc_curve(v, np.zeros((10, 10, 10)))
    with pytest.raises(FileNotFoundError): cb.fsc_curve(v, "/nonexistent/map.mrc")
    with pytest.raises(InputError, match="2 maps but 1"): cb.fsc_table([v, v], [v[None]] * 1)


# ---------------------------------------------------------------- per-state / per-image FSC
def blob(c, D=24, sigma=1.2):
    g = torch.arange(D, dtype=torch.float32) - D // 2
    zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
    return torch.exp(-((xx - float(c)) ** 2 + yy ** 2 + zz ** 2) / (2 * sigma ** 2))


@pytest.fixture(scope="module")
def line_states():
    S, per = 6, 30
    pos = np.linspace(-5, 5, S)
    labels = np.repeat(np.arange(S), per)
    z = (pos[labels] + 0.2 * np.random.default_rng(4).standard_normal(len(labels)))[:, None]
    return pos, labels, z, [blob(p) for p in pos]


def test_per_conformation_protocol(line_states):
    pos, labels, z, gts = line_states
    st = cb.state_latents(z, labels)
    for s in range(len(pos)):                         # snapped latent = nearest image latent to the state mean
        zs = z[labels == s, 0]
        i = np.argmin(np.abs(z[:, 0] - zs.mean()))
        assert st.image[s] == i
    good = cb.per_conformation_fsc(z, labels, lambda zi: blob(zi[0]), gts, apix=3.0)
    wrong = cb.per_conformation_fsc(z, labels, lambda zi: blob(-zi[0]), gts, apix=3.0)
    assert (good.table.auc > 0.4).all() and good.table.auc.mean() > wrong.table.auc.mean() + 0.05
    s = good.summary().set_index("metric")
    assert s.loc["auc", "mean"] == pytest.approx(good.table.auc.mean())
    assert s.loc["auc", "std"] == pytest.approx(good.table.auc.std(ddof=0))
    assert good.table["res_0.5_A"].equals(3.0 * good.table["res_0.5_px"])


def test_per_image_protocol(line_states):
    pos, labels, z, gts = line_states
    seen = []
    def decode(zi):
        seen.append(float(zi[0])); return blob(zi[0])
    r = cb.per_image_fsc(z, labels, decode, gts, n=12)
    idx = np.arange(12) * (len(z) // 12)
    assert list(r.table.image) == list(idx) and list(r.table.state) == list(labels[idx])
    assert np.allclose(seen, z[idx, 0], atol=1e-6)                     # each image decoded from its own latent
    by = r.summary(by="state")
    assert by.n.sum() == 12 and set(by.columns) >= {"state", "auc_mean", "auc_std"}
    with pytest.raises(InputError, match="labels"):
        cb.per_image_fsc(z[:-1], labels, decode, gts)


def test_volumes_given_rules(line_states):
    pos, labels, z, gts = line_states
    centres = np.linspace(-5, 5, 11)                                     # k-means-like maps, every 2nd one is a state
    vols = [blob(c) for c in centres]
    a = cb.assign_volumes(labels, 11, z=z, volume_z=centres[:, None])
    assert list(a.volume) == [0, 2, 4, 6, 8, 10]
    cl = np.abs(z - centres[None]).argmin(1)
    assert list(cb.assign_volumes(labels, 11, volume_labels=cl).volume) == [0, 2, 4, 6, 8, 10]
    r = cb.volumes_fsc(vols, labels, gts, z=z, volume_z=centres)
    assert np.allclose(r.table.auc, (24 / 2 - 1) / 24)
    r = cb.volumes_fsc(gts[::-1], labels, gts, rule="direct")
    assert r.table.auc.iloc[0] < 0.3 and r.table.auc.iloc[2] < r.table.auc.iloc[0] + 0.2
    with pytest.raises(InputError, match="11 maps but 6"): cb.assign_volumes(labels, 11)
    with pytest.raises(InputError, match="0…10"): cb.assign_volumes(labels, 11, volume_labels=cl + 1)


def test_reference_bounds_with_callable(line_states):
    pos, labels, z, gts = line_states
    calls = []
    def rec(ind):
        calls.append(len(ind)); return torch.stack([gts[s] for s in np.unique(labels[ind])]).mean(0)
    up, lo = cb.reference_bounds(labels, rec, gts)
    assert calls == [30] * 6 + [180]
    assert np.allclose(up.table.auc, 11 / 24) and (lo.table.auc < up.table.auc - 0.01).all()


# ---------------------------------------------------------------- latent metrics
def test_neighborhood_similarity_known_answers():
    g = np.random.default_rng(5)
    x = g.standard_normal((1500, 3))
    assert np.allclose(cb.neighborhood_similarity(x, x, ks=[3, 30, 150]).ns_mean, 100.0)
    Q = np.linalg.qr(g.standard_normal((3, 3)))[0]
    assert np.allclose(cb.neighborhood_similarity(3 * x @ Q - 2, x, ks=[3, 30], smear=0).ns_mean, 100.0)
    ns = cb.neighborhood_similarity(g.standard_normal((1500, 3)), x, ks=[10, 60, 150])
    n = 300
    chance = (1 + (ns.k - 1) ** 2 / (n - 1)) / ns.k * 100           # two random k-sets sharing the point itself
    assert np.all(np.abs(ns.ns_mean - chance) < 3), (ns, chance)
    # default grid: k = 1 %…20 % of the subsample, as CryoBench's 200…4000 at N' = 20k
    assert list(cb.neighborhood_similarity(x, x).k) == [3 * i for i in range(1, 21)]
    # partial information: NS drops between identity and chance
    mid = cb.neighborhood_similarity(x + 0.5 * g.standard_normal(x.shape), x, ks=[30]).ns_mean.iloc[0]
    assert chance.iloc[1] + 5 < mid < 95
    with pytest.raises(InputError): cb.neighborhood_similarity(x, x[:-1])
    with pytest.raises(InputError, match="k must be"): cb.neighborhood_similarity(x, x, ks=[300])


def test_neighborhood_similarity_matches_bruteforce():
    g = np.random.default_rng(6)
    a, b = g.standard_normal((100, 2)), g.standard_normal((100, 2))
    ns = cb.neighborhood_similarity(a, b, ks=[1, 5, 20], n_subsets=1, smear=0)
    da = np.linalg.norm(a[:, None] - a[None], axis=-1); db = np.linalg.norm(b[:, None] - b[None], axis=-1)
    for k, val in zip([1, 5, 20], ns.ns_mean):
        na, nb = np.argsort(da, 1)[:, :k], np.argsort(db, 1)[:, :k]
        ref = np.mean([len(set(na[i]) & set(nb[i])) / k for i in range(100)]) * 100
        assert val == pytest.approx(ref)


def test_information_imbalance_known_answers():
    g = np.random.default_rng(7)
    x = g.standard_normal((900, 3))
    ii = cb.information_imbalance(x, x, ks=(1, 3, 10), n_points=800)
    assert ii.delta_ab.iloc[0] == pytest.approx(2 / 800) and (ii.delta_ab < 0.03).all() and (ii.delta_ba < 0.03).all()
    ii = cb.information_imbalance(x, g.standard_normal((900, 2)), ks=(1, 10, 30), n_points=800, n_repeats=2)
    assert np.all(np.abs(ii.delta_ab - 1) < 0.08) and np.all(np.abs(ii.delta_ba - 1) < 0.08), ii
    ii = cb.information_imbalance(x, x[:, 0], ks=(1, 3), n_points=800)   # full space predicts a coordinate, not back
    assert (ii.delta_ab < 0.3).all() and (ii.delta_ba > ii.delta_ab + 0.2).all(), ii
    # brute force on a small set, no smear
    a, b = g.standard_normal((50, 2)), g.standard_normal((50, 2))
    ii = cb.information_imbalance(a, b, ks=(1, 4), n_points=50, smear=0)
    da = np.linalg.norm(a[:, None] - a[None], axis=-1); db = np.linalg.norm(b[:, None] - b[None], axis=-1)
    np.fill_diagonal(da, np.inf); np.fill_diagonal(db, np.inf)
    rb = np.argsort(np.argsort(db, 1), 1) + 1
    for k, val in zip((1, 4), ii.delta_ab):
        nn = np.argsort(da, 1)[:, :k]
        assert val == pytest.approx(2 / 50 * np.take_along_axis(rb, nn, 1).mean())


def test_pose_error_recovers_planted_rotation():
    g = np.random.default_rng(8)
    N = 500
    Rg = Rotation.random(N, random_state=10).as_matrix()
    G = Rotation.random(random_state=11).as_matrix()
    J = np.diag([1.0, 1.0, -1.0])
    jitter = Rotation.from_rotvec(np.radians(1.0) * g.standard_normal((N, 3)) / np.sqrt(3)).as_matrix()
    for side in ("right", "left"):
        for mirror in (False, True):
            Rp = Rg @ G if side == "right" else G @ Rg
            if mirror: Rp = J @ Rp @ J
            Rp = Rp @ jitter
            bad = g.choice(N, 100, replace=False); Rp[bad] = Rotation.random(100, random_state=12).as_matrix()
            fit = cb.fit_global_rotation(Rg, Rp)
            assert fit["side"] == side and fit["mirrored"] == mirror
            assert cb.geodesic_deg(fit["G"], G) < 0.3
            tab, info = cb.pose_error(Rg, Rp, labels=np.arange(N) % 5)
            good = np.setdiff1d(np.arange(N), bad)
            assert np.median(tab.rot_error_deg.values[good]) < 1.5 and tab.rot_error_deg.values[bad].mean() > 30
    with pytest.raises(InputError): cb.fit_global_rotation(Rg, Rg[:-1])
    # translations: a planted 3-D origin offset is fitted out
    c = np.array([1.5, -4.0, 2.0]); tg = g.uniform(-5, 5, (N, 2))
    tab, info = cb.pose_error(Rg, Rg, tg, tg + Rg[:, :2, :] @ c, fit_offset=True)
    assert np.allclose(info["offset"], c) and tab.trans_error.max() < 1e-9
    assert cb.geodesic_deg(np.eye(3), Rotation.from_euler("z", 30, degrees=True).as_matrix()) == pytest.approx(30)


# ---------------------------------------------------------------- benchmark folders (cryonb.simulate)
def two_blob(c, D=32):
    g = torch.arange(D, dtype=torch.float32) - D // 2
    zz, yy, xx = torch.meshgrid(g, g, g, indexing="ij")
    return (torch.exp(-((xx - c) ** 2 + yy ** 2 + zz ** 2) / 8) + torch.exp(-((xx + 4) ** 2 + (yy - 3) ** 2 + zz ** 2) / 8))


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    from cryonb.simulate import simulate_dataset
    out = tmp_path_factory.mktemp("bench")
    maps = torch.stack([two_blob(c) for c in (-3.0, 0.0, 3.0, 6.0)])
    sd = simulate_dataset(maps, out, n_per_state=60, apix=3.0, snr=None, seed=0, max_shift_px=2, junk_fraction=0.1)
    return sd


def test_load_benchmark_reads_simulate_output(simulated):
    b = cb.load_benchmark(simulated.out_dir)
    assert b.apix == 3.0 and b.D == 32 and len(b.gt_maps) == 4 and len(b.labels) == 240
    assert b.poses[0].shape == (240, 3, 3) and b.ctf.shape == (240, 9) and b.junk.sum() == 24
    assert torch.equal(b.gt_maps[2], torch.as_tensor(read_map(simulated.gt_maps[2])[0]))


def test_evaluate_on_simulated_benchmark(simulated):
    b = cb.load_benchmark(simulated.out_dir)
    lab = b.labels
    z = (lab + 0.05 * np.random.default_rng(0).standard_normal(len(lab)))[:, None] @ np.ones((1, 3))
    res = cb.evaluate(b, z=z, volumes=simulated.gt_maps, embedding="pca", poses=(b.poses[0] @ Rotation.random(random_state=3).as_matrix(), b.poses[1]))
    s = res["summary"].set_index("metric").value
    assert s["per-conformation AUC mean"] == pytest.approx(15 / 32) and s["per-conformation AUC std"] == 0
    assert s["rotation error median (deg)"] < 1e-3 and s["translation error mean (Å)"] < 1e-4
    assert res["n_scored"] == 216                                                # junk excluded
    assert s["Δ(z→GT)"] < 0.6 and s["Δ(z→GT pose)"] > 0.8 and s["Δ(z→GT CTF)"] > 0.8   # no nuisance leak
    assert set(res["figures"]) >= {"fsc_per_state", "ns", "latent"}
    # a decoder: the GT map of the nearest state
    dec = lambda zi: b.gt_maps[int(np.clip(np.round(float(zi[0])), 0, 3))]
    res2 = cb.evaluate(b, z=z, decode=dec, per_image=8, embedding=None)
    assert np.allclose(res2["per_state"].table.auc, 15 / 32) and len(res2["per_image"].table) == 8
    assert not b.junk[res2["per_image"].table.image].any() and not b.junk[res2["per_state"].table.image].any()
    files = cb.write_results(res, simulated.out_dir / "eval")
    js = json.loads(files["metrics.json"].read_text())
    assert len(js["per_state"]) == 4 and js["pose_fit"]["side"] in ("right", "left")
    assert "<script" in files["report.html"].read_text()


def test_benchmark_errors(tmp_path, simulated):
    with pytest.raises(FileNotFoundError): cb.load_benchmark(tmp_path / "nope")
    (tmp_path / "d").mkdir()
    with pytest.raises(FileNotFoundError, match="labels.npy"): cb.load_benchmark(tmp_path / "d")
    np.save(tmp_path / "d" / "labels.npy", np.array([0, 1, 7]))
    with pytest.raises(FileNotFoundError, match="state_XXX"): cb.load_benchmark(tmp_path / "d")
    (tmp_path / "d" / "gt_maps").mkdir()
    import shutil; shutil.copy(simulated.gt_maps[0], tmp_path / "d" / "gt_maps" / "state_000.mrc")
    with pytest.raises(InputError, match=r"labels \[1, 7\]"): cb.load_benchmark(tmp_path / "d")
    b = cb.load_benchmark(simulated.out_dir)
    with pytest.raises(InputError, match="5 latents"): cb.evaluate(b, z=np.zeros((5, 2)), embedding=None)


def test_upper_bound_on_adk_near_ideal_and_falls_with_snr(tmp_path):
    """Issue-4 check: GT-label back-projection of an AdK-DIMS benchmark (cryonb.datasets, real
    structures) gives per-state AUC close to the ideal at high SNR, and lower AUC at low SNR."""
    from cryonb.datasets import make_adk_dataset
    ideal = (32 / 2 - 1) / 32
    res = {}
    for snr in (10.0, 0.05):
        make_adk_dataset(tmp_path / str(snr), states=2, images_per_state=200, D=32, apix=3.0, snr=snr, seed=0)
        b = cb.load_benchmark(tmp_path / str(snr))
        res[snr] = cb.reference_bounds(b.labels, cb.benchmark_reconstructor(b), b.gt_maps, apix=b.apix)
    up_hi, lo_hi = res[10.0]
    assert (up_hi.table.auc > ideal - 0.02).all(), up_hi.table
    assert (lo_hi.table.auc < up_hi.table.auc).all()                 # ignoring heterogeneity costs resolution
    assert (res[0.05][0].table.auc < up_hi.table.auc - 0.05).all(), res[0.05][0].table
