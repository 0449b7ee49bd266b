"""CryoSieve core (cryonb.methods.cryosieve): against a from-scratch implementation of the reference
algorithm (real-space splatting projection, rfft-grid CTF, as described in shared/reference/cryosieve.md),
output files, RELION 3.0 vs 3.1 stars, streaming, balance, errors."""
import math
import numpy as np
import pandas as pd
import pytest
import starfile
import torch

from cryonb.methods import cryosieve as cs
from cryonb import synthetic


# ---- the reference algorithm, written independently from its description (numpy, float64) -------------
def _relion_matrix_from_quaternion(rot, tilt, psi):
    "RELION A(rot, tilt, psi) built the way cryosieve builds it: from a quaternion."
    rot, tilt, psi = np.deg2rad(rot), np.deg2rad(tilt), np.deg2rad(psi)
    w = np.cos((psi + rot) / 2) * np.cos(tilt / 2)
    x = -np.sin((psi - rot) / 2) * np.sin(tilt / 2)
    y = -np.cos((psi - rot) / 2) * np.sin(tilt / 2)
    z = -np.sin((psi + rot) / 2) * np.cos(tilt / 2)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def _splat(vol, A):
    "Real-space projection: each voxel added bilinearly at (A[0]·r + c, A[1]·r + c); outside dropped."
    n = vol.shape[0]; c = n // 2
    z, y, x = np.meshgrid(*(np.arange(n) - c,) * 3, indexing="ij")
    r = np.stack([x.ravel(), y.ravel(), z.ravel()])
    px, py = A[0] @ r + c, A[1] @ r + c
    v = vol.ravel()
    keep = v != 0
    px, py, v = px[keep], py[keep], v[keep]
    x0, y0 = np.floor(px).astype(int), np.floor(py).astype(int)
    dx, dy = px - x0, py - y0
    img = np.zeros((n, n))
    for ox, oy, wgt in ((0, 0, (1 - dx) * (1 - dy)), (1, 0, dx * (1 - dy)), (0, 1, (1 - dx) * dy), (1, 1, dx * dy)):
        xi, yi = x0 + ox, y0 + oy
        ok = (xi >= 0) & (xi < n) & (yi >= 0) & (yi < n)
        np.add.at(img, (yi[ok], xi[ok]), (v * wgt)[ok])
    return img


def _rfft_k(n):
    ky = np.fft.fftfreq(n) * n
    ky[n // 2] = n // 2                       # 1.3.x: Nyquist row is +n/2
    kx = np.arange(n // 2 + 1)
    return np.meshgrid(ky, kx, indexing="ij")


def _reference_score(img, vol, A, apix_ctf, apix_hp, freq, du, dv, dang, volt, cs_mm, w, phase, ox, oy):
    n = img.shape[0]
    KY, KX = _rfft_k(n)
    P = _splat(vol, A)
    s = np.sqrt(KX ** 2 + KY ** 2) / (n * apix_ctf)
    alpha = np.arctan2(KY, KX) - np.deg2rad(dang)
    delta = -(du + dv + (du - dv) * np.cos(2 * alpha)) / 2
    V = volt * 1e3
    lam = 12.2643247 / np.sqrt(V * (1 + 0.978466e-6 * V))
    chi = np.pi * lam * delta * s ** 2 + np.pi / 2 * cs_mm * 1e7 * lam ** 3 * s ** 4 - np.deg2rad(phase)
    ctf = -np.sqrt(1 - w * w) * np.sin(chi) + w * np.cos(chi)
    CP = np.fft.irfft2(ctf * np.fft.rfft2(P), s=(n, n))
    It = np.fft.irfft2(np.fft.rfft2(img) * np.exp(-2j * np.pi * (ox * KX + oy * KY) / n), s=(n, n))
    H = (np.sqrt(KX ** 2 + KY ** 2) / n >= apix_hp / freq)
    Hf = lambda x: np.fft.irfft2(np.fft.rfft2(x) * H, s=(n, n))
    return float((Hf(CP - It) ** 2).sum() - (Hf(It) ** 2).sum())


@pytest.fixture(scope="module")
def blob(tmp_path_factory):
    d = synthetic.blob_dataset(tmp_path_factory.mktemp("blob"), n=120, D=32, apix=2.0, junk_fraction=0.2, noise_sigma=3.0, seed=11)
    return d


def test_matches_reference_algorithm(blob):
    "Scores vs the reference's splatting algorithm: same ranking (Spearman > 0.98), ≥ 90 % of the same kept set."
    parts = cs.SieveParticles(blob["star"])
    mask = cs.load_map(blob["mask"])[0]
    vol = blob["volume"] * mask
    ours = cs.score_particles(parts, [blob["volume"]] * 2, 20.0, mask=mask, device="cpu")
    df = starfile.read(blob["star"])["particles"]
    ref = []
    for j in range(len(df)):                      # test-only reference loop
        r = df.iloc[j]
        A = _relion_matrix_from_quaternion(r.rlnAngleRot, r.rlnAngleTilt, r.rlnAnglePsi)
        ref.append(_reference_score(parts.images([j])[0].astype(np.float64), vol, A, 2.0, 2.0, 20.0, r.rlnDefocusU,
                                    r.rlnDefocusV, r.rlnDefocusAngle, 300.0, 2.7, 0.1, r.rlnPhaseShift,
                                    r.rlnOriginXAngst / 2.0, r.rlnOriginYAngst / 2.0))
    ref = np.array(ref)
    rank = lambda a: np.argsort(np.argsort(a))
    rho = np.corrcoef(rank(ours), rank(ref))[0, 1]
    keep_o = cs.select_per_halfset(ours, parts.halfset, 0.8)
    keep_r = cs.select_per_halfset(ref, parts.halfset, 0.8)
    overlap = (keep_o & keep_r).sum() / keep_r.sum()
    print(f"Spearman {rho:.4f}, kept-set overlap {overlap:.3f}, relative score difference median "
          f"{np.median(np.abs(ours - ref) / np.abs(ref)):.3f}")
    assert rho > 0.98 and overlap >= 0.9
    # the Fourier-slice projection and the splatting agree best at low frequency: same scale within 15 %
    assert np.median(np.abs(ours - ref) / np.abs(ref)) < 0.15


def test_euler_matrix_is_relion(blob):
    "Our pose matrices equal cryosieve's quaternion construction of RELION's A."
    parts = cs.SieveParticles(blob["star"])
    df = starfile.read(blob["star"])["particles"]
    ref = np.stack([_relion_matrix_from_quaternion(*r) for r in df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy()])
    np.testing.assert_allclose(parts.rotations, ref, atol=1e-12)


def test_relion30_star_gives_same_scores(blob, tmp_path):
    "A RELION 3.0 star (origins in pixels, CTF columns per particle, --angpix) scores like the 3.1 star."
    b = starfile.read(blob["star"], always_dict=True)
    p, o = b["particles"].copy(), b["optics"]
    p["rlnOriginX"] = p.pop("rlnOriginXAngst") / 2.0
    p["rlnOriginY"] = p.pop("rlnOriginYAngst") / 2.0
    for c in ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast"):
        p[c] = o[c].iloc[0]
    p = p.drop(columns=["rlnOpticsGroup"])
    p["rlnImageName"] = [f"{i + 1:06d}@{blob['stack']}" for i in range(len(p))]      # absolute stack path
    starfile.write({"images": p}, tmp_path / "r30.star", overwrite=True)
    with pytest.raises(ValueError, match="angpix"):
        cs.SieveParticles(tmp_path / "r30.star")
    s30 = cs.score_particles(cs.SieveParticles(tmp_path / "r30.star", angpix=2.0), [blob["volume"]] * 2, 20.0, device="cpu")
    s31 = cs.score_particles(cs.SieveParticles(blob["star"]), [blob["volume"]] * 2, 20.0, device="cpu")
    np.testing.assert_allclose(s30, s31, rtol=1e-4)     # origins re-written with ~8 digits


def test_outputs_preserve_rows_columns_optics(blob, tmp_path):
    r = cs.sieve_core(blob["star"], tmp_path / "kept.star", [blob["map"]] * 2, 20.0, mask=blob["mask"], device="cpu", verbose=False)
    inp = starfile.read(blob["star"], always_dict=True)
    kept = starfile.read(tmp_path / "kept.star", always_dict=True)
    siev = starfile.read(tmp_path / "kept_sieved.star", always_dict=True)
    assert list(kept) == list(inp) == list(siev)
    pd.testing.assert_frame_equal(kept["optics"], inp["optics"])
    pd.testing.assert_frame_equal(siev["optics"], inp["optics"])
    assert list(kept["particles"].columns) == list(inp["particles"].columns)
    names = inp["particles"]["rlnImageName"].tolist()
    kn, sn = kept["particles"]["rlnImageName"].tolist(), siev["particles"]["rlnImageName"].tolist()
    assert set(kn).isdisjoint(sn) and sorted(kn + sn) == sorted(names)
    assert kn == [x for x in names if x in set(kn)] and sn == [x for x in names if x in set(sn)]   # input order
    assert len(kn) == 2 * round(0.8 * 60)
    junk = blob["junk"]
    assert (~r["keep"] & junk).sum() >= 0.8 * junk.sum()


def test_streaming_reads_batches_from_memory_map(blob, monkeypatch):
    parts = cs.SieveParticles(blob["star"])
    sizes = []
    orig = cs.SieveParticles.images
    monkeypatch.setattr(cs.SieveParticles, "images", lambda self, idx: (sizes.append(len(idx)), orig(self, idx))[1])
    cs.score_particles(parts, [blob["volume"]] * 2, 20.0, batch_size=16, device="cpu")
    assert max(sizes) == 16 and sum(sizes) == len(parts)


def test_single_precision_same_selection(blob):
    parts = cs.SieveParticles(blob["star"])
    d = cs.score_particles(parts, [blob["volume"]] * 2, 20.0, device="cpu")
    s = cs.score_particles(parts, [blob["volume"]] * 2, 20.0, device="cpu", precision="single")
    np.testing.assert_allclose(s, d, rtol=1e-3, atol=1e-3 * np.abs(d).max())
    assert (cs.select_per_halfset(s, parts.halfset) == cs.select_per_halfset(d, parts.halfset)).mean() > 0.98


def test_balance_core_and_driver(tmp_path):
    d = synthetic.blob_dataset(tmp_path / "unbal", n=90, D=32, apix=2.0, junk_fraction=0.0, noise_sigma=3.0, seed=4)
    b = starfile.read(d["star"], always_dict=True)
    b["particles"]["rlnRandomSubset"] = np.where(np.arange(90) < 60, 1, 2)        # 60 / 30
    starfile.write(b, d["star"], overwrite=True)
    r = cs.sieve_core(d["star"], tmp_path / "b.star", [d["map"]] * 2, 20.0, balance=True, device="cpu", verbose=False)
    assert r["per_halfset"] == {1: (60, 24), 2: (30, 24)}
    r = cs.sieve_core(d["star"], tmp_path / "nb.star", [d["map"]] * 2, 20.0, device="cpu", verbose=False)
    assert r["per_halfset"] == {1: (60, 48), 2: (30, 24)}


def test_errors(blob, tmp_path):
    parts = cs.SieveParticles(blob["star"])
    with pytest.raises(ValueError, match="one --volume per half-set"):
        cs.score_particles(parts, [blob["volume"]], 20.0, device="cpu")
    with pytest.raises(ValueError, match="shape"):
        cs.score_particles(parts, [blob["volume"][:16, :16, :16]] * 2, 20.0, device="cpu")
    with pytest.raises(FileNotFoundError):
        cs.SieveParticles(tmp_path / "nope.star")
    with pytest.raises(FileNotFoundError, match="no such MRC file"):
        cs.sieve_core(blob["star"], tmp_path / "o.star", [tmp_path / "x.mrc"] * 2, 20.0, device="cpu")
    b = starfile.read(blob["star"], always_dict=True)
    b["particles"] = b["particles"].drop(columns=["rlnAngleTilt"])
    starfile.write(b, tmp_path / "notilt.star", overwrite=True)
    with pytest.raises(ValueError, match="rlnAngleTilt"):
        cs.SieveParticles(tmp_path / "notilt.star")


def test_interleaved_optics_groups_keep_their_rows(tmp_path):
    """relion31.6opticsgroups.star lists particles by group 6,5,2,1,3,4 (pixel size and Cs differ by group).
    Synthetic images made from each row's own parameters: the junk is found, and reordering the rows (what the
    reference's merge does) moves each score with its row."""
    from cryonb.synthetic import test_data_path
    d = synthetic.blob_dataset(tmp_path, n=139, D=32, apix=1.25, junk_fraction=0.2, noise_sigma=2.0, seed=13,
                        template_star=test_data_path("relion31.6opticsgroups.star"))
    parts = cs.SieveParticles(d["star"])
    grp = starfile.read(d["star"])["particles"]["rlnOpticsGroup"].to_numpy()
    opt = starfile.read(d["star"])["optics"].set_index("rlnOpticsGroup")
    np.testing.assert_array_equal(parts.apix, opt.loc[grp, "rlnImagePixelSize"].to_numpy())
    r = cs.sieve_core(d["star"], tmp_path / "o.star", [d["map"]] * 2, 10.0, mask=d["mask"], device="cpu", verbose=False)
    assert (~r["keep"] & d["junk"]).sum() >= 0.8 * d["junk"].sum()
    b = starfile.read(d["star"], always_dict=True)
    perm = np.argsort(grp, kind="stable")
    b["particles"] = b["particles"].iloc[perm].reset_index(drop=True)
    starfile.write(b, tmp_path / "sorted.star", overwrite=True)
    s = cs.score_particles(cs.SieveParticles(tmp_path / "sorted.star"), [d["volume"]] * 2, 10.0,
                           mask=cs.load_map(d["mask"])[0], device="cpu")
    np.testing.assert_allclose(s, r["scores"][perm], rtol=1e-6)


def test_many_stacks_lru(blob, tmp_path):
    "One stack per micrograph (here 40 stacks of 3 images; cryonb.io keeps an LRU of open maps): same scores."
    import mrcfile
    parts = cs.SieveParticles(blob["star"])
    imgs = parts.images(np.arange(len(parts)))
    names = []
    for f in range(40):
        with mrcfile.new(tmp_path / f"mic{f:03d}.mrcs") as m:
            m.set_data(imgs[3 * f: 3 * f + 3])
        names += [f"{i + 1:06d}@mic{f:03d}.mrcs" for i in range(3)]
    b = starfile.read(blob["star"], always_dict=True)
    b["particles"]["rlnImageName"] = names
    from cryonb.io import write_star                     # full precision, as the blob star itself was written
    write_star(tmp_path / "multi.star", b["particles"], b["optics"])
    multi = cs.SieveParticles(tmp_path / "multi.star")
    assert len(multi.meta.image_files) == 40
    s1 = cs.score_particles(multi, [blob["volume"]] * 2, 20.0, batch_size=10, device="cpu")
    s0 = cs.score_particles(parts, [blob["volume"]] * 2, 20.0, device="cpu")
    np.testing.assert_allclose(s1, s0, rtol=1e-12, atol=1e-9)


def test_maps_honour_the_mrc_axis_order(tmp_path):
    "A map stored with columns along z (mapc=3, mapr=2, maps=1) reads back as [z,y,x] (the old private reader ignored it)."
    import mrcfile
    v = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)      # [z, y, x]
    with mrcfile.new(tmp_path / "zyx.mrc") as m:
        m.set_data(np.ascontiguousarray(v.transpose(2, 1, 0)))                  # file sections along x, columns along z
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
        m.voxel_size = 2.0
    got, apix = cs.load_map(tmp_path / "zyx.mrc")
    np.testing.assert_array_equal(got, v)
    assert apix == 2.0
