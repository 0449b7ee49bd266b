"""Every supported file format read on a real fixture (tests/data, see its README), with parity
against peer-made outputs (cryoDRGN 4.3.1 .pkl files, mrcfile, starfile) and round trips."""
import pickle, warnings

import numpy as np
import pandas as pd
import pytest
import torch
import mrcfile
import starfile

from cryonb import io as cio
from cryonb.synthetic import test_data_path as T


def ref_pkl(name):
    with open(T(name), "rb") as f:        # trusted fixture: plain pickle as the independent reference
        return pickle.load(f)


# ---------------------------------------------------------------- MRC
def test_map_read_matches_mrcfile_and_header():
    v, apix, origin = cio.read_map(T("toymodel_small_nocenter.mrc"), return_origin=True)
    with mrcfile.open(T("toymodel_small_nocenter.mrc")) as m:
        np.testing.assert_array_equal(v, m.data)
    assert v.shape == (30, 30, 30) and apix == 1.0 and tuple(origin) == (0, 0, 0)


@pytest.mark.parametrize("name,shape,apix", [("hand.mrcs", (100, 64, 64), 1.0),
                                             ("relion31.mrcs", (5, 256, 256), 1.0),
                                             ("empiar_10076_7.mrc", (7, 320, 320), None),
                                             ("toy_datadir/toy_images_b.mrcs", (900, 30, 30), 1.0)])
def test_stacks_memory_mapped(name, shape, apix):
    s, a = cio.read_stack(T(name))
    assert isinstance(s, np.memmap) and s.shape == shape and a == apix
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with mrcfile.open(T(name), permissive=True) as m:
            np.testing.assert_array_equal(s[-1], m.data[-1])


def test_axis_order_is_honoured(tmp_path):
    v = np.random.default_rng(0).normal(size=(8, 8, 8)).astype(np.float32)   # [z, y, x]
    p = tmp_path / "perm.mrc"
    with mrcfile.new(p) as m:             # same map stored with columns = z, rows = y, sections = x
        m.set_data(np.ascontiguousarray(v.transpose(2, 1, 0)))
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1
    np.testing.assert_array_equal(cio.read_map(p)[0], v)


def test_write_map_origin_puts_box_centre_at_zero(tmp_path):
    v = np.zeros((20, 20, 20), np.float32); v[10, 10, 10] = 1
    cio.write_map(tmp_path / "m.mrc", v, 1.5)
    with mrcfile.open(tmp_path / "m.mrc") as m:
        o = np.array([m.header.origin.x, m.header.origin.y, m.header.origin.z], dtype=float)
        assert m.voxel_size.x == pytest.approx(1.5)
    np.testing.assert_allclose(o + 10 * 1.5, 0)          # voxel D//2 sits at 0 Å


def test_stack_writer_appends_chunks(tmp_path):
    x = np.random.default_rng(2).normal(size=(25, 16, 16)).astype(np.float32)
    w = cio.StackWriter(tmp_path / "s.mrcs", apix=3.2)
    for s in range(0, 25, 7): w.append(x[s:s + 7])
    w.close()
    assert mrcfile.validate(str(tmp_path / "s.mrcs"), print_file=open("/dev/null", "w"))
    y, a = cio.read_stack(tmp_path / "s.mrcs")
    np.testing.assert_array_equal(y, x); assert a == pytest.approx(3.2)


# ---------------------------------------------------------------- STAR
def test_star_relion30_pfcrt_pose_parity():
    p, o = cio.read_star(T("FinalRefinement-OriginalParticles-PfCRT.star"))
    assert o is None
    f = cio.star_fields(p, o)
    rot, trans = ref_pkl("pose.star.pkl")
    np.testing.assert_allclose(f["rot"], rot, atol=1e-6)
    np.testing.assert_allclose(f["shift_px"] / 300, trans, rtol=1e-6)      # t = origin_px / D, no sign flip
    np.testing.assert_allclose(f["apix"], 1.035)                          # 1.035 µm × 1e4 / 10000
    np.testing.assert_array_equal(f["halfset"], p.rlnRandomSubset.to_numpy() - 1)


def test_star_relion31_block_order_irrelevant():
    a = cio.load_particles(T("relion31.star")); b = cio.load_particles(T("relion31.v2.star"))
    torch.testing.assert_close(a.rotations, b.rotations); torch.testing.assert_close(a.shifts_A, b.shifts_A)
    assert a.D == 256 and a.apix == pytest.approx(2.806)
    np.testing.assert_allclose(a.ctf_values["voltage"], 300); np.testing.assert_allclose(a.ctf_values["cs"], 0.01)
    np.testing.assert_allclose(a.ctf_values["bfactor"], a.table.rlnCtfBfactor)
    # origins are in Å in this file: taken as they are
    np.testing.assert_allclose(a.shifts_A.numpy(), a.table[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(), rtol=1e-6)


def test_star_relion5_datadir():
    with pytest.warns(UserWarning, match="448"):      # optics claims D 448; the toy stacks are 30 px
        m = cio.load_particles(T("relion5.star"), datadir=T("toy_datadir"))
    assert len(m) == 17 and m.D == 30 and m.D_file == 448 and m.apix == pytest.approx(0.89)
    p = starfile.read(T("relion5.star"))["particles"]
    idx = p.rlnImageName.str.split("@").str[0].astype(int).to_numpy() - 1
    np.testing.assert_array_equal(m.image_index, idx)
    imgs = cio.read_images(m)
    for r in (0, 9, 16):
        i, name = p.rlnImageName[r].split("@")
        with mrcfile.open(T("toy_datadir") / name, permissive=True) as f:
            np.testing.assert_array_equal(imgs[r], f.data[int(i) - 1])


def test_star_relion30_apix_from_magnification_and_no_phase_shift():
    m = cio.load_particles(T("empiar_10076_7.star"))
    assert m.apix == pytest.approx(5e4 / 38168)
    assert (m.ctf_values["phase_shift"] == 0).all() and np.isfinite(m.ctf_array()).all()
    assert m.rotations is None and any("Euler" in s for s in m.missing)


def test_star_duplicate_and_arbitrary_indices():
    m = cio.load_particles(T("toy_projections_13.star"))
    full, _ = cio.read_stack(T("toy_projections.mrcs"))
    np.testing.assert_array_equal(cio.read_images(m), full[m.image_index])
    assert len(m) == 13 and len(set(m.image_index.tolist())) == 12


def _interleaved_6groups(tmp_path):
    p, o = cio.read_star(T("relion31.6opticsgroups.star"))
    # interleave: round-robin over optics groups, so neighbouring rows belong to different groups
    order = np.concatenate([np.nonzero(p.rlnOpticsGroup.to_numpy() == g)[0] for g in sorted(p.rlnOpticsGroup.unique())])
    rank = np.concatenate([np.arange(c) for c in p.rlnOpticsGroup.value_counts().sort_index().to_numpy()])
    inter = p.iloc[order[np.lexsort((p.rlnOpticsGroup.to_numpy()[order], rank))]].reset_index(drop=True)
    cio.write_star(tmp_path / "inter.star", inter, o)
    return inter, o


def test_optics_join_keeps_particle_order(tmp_path):
    inter, o = _interleaved_6groups(tmp_path)
    g = inter.rlnOpticsGroup.to_numpy()
    assert (g[1:] != g[:-1]).mean() > 0.5                     # really interleaved
    m = cio.load_particles(tmp_path / "inter.star", require_images=False)
    # expected values row by row, with a plain dict lookup per particle
    opt = {int(r.rlnOpticsGroup): r for r in o.itertuples()}
    exp_apix = np.array([opt[int(k)].rlnImagePixelSize for k in g])
    exp_cs = np.array([opt[int(k)].rlnSphericalAberration for k in g])
    np.testing.assert_array_equal(m.apix_per_particle, exp_apix)
    np.testing.assert_array_equal(m.ctf_values["cs"], exp_cs)
    np.testing.assert_array_equal(m.ctf_values["defocus_u"], inter.rlnDefocusU.to_numpy())
    np.testing.assert_array_equal(m.stack_names, inter.rlnImageName.str.split("@").str[1].to_numpy())
    # per-particle Å origins divided by the particle's own pixel size
    np.testing.assert_allclose(m.shifts_px, inter[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy() / exp_apix[:, None])
    # the test can fail: a sorting join (pd.merge on the group) pairs particles with wrong values
    merged = inter.merge(o[["rlnOpticsGroup", "rlnImagePixelSize"]], on="rlnOpticsGroup", how="left", sort=True)
    assert not np.array_equal(merged.rlnDefocusU.to_numpy(), inter.rlnDefocusU.to_numpy())


def test_write_star_keeps_columns_and_optics(tmp_path):
    p, o = cio.read_star(T("relion31.6opticsgroups.star"))
    m = cio.load_particles(T("relion31.6opticsgroups.star"), require_images=False)
    m.subset(np.arange(0, 139, 3)).write_star(tmp_path / "sub.star")
    p2, o2 = cio.read_star(tmp_path / "sub.star")
    assert list(p2.columns) == list(p.columns) and len(p2) == 47
    pd.testing.assert_frame_equal(o2, o, check_dtype=False)
    pd.testing.assert_frame_equal(p2, p.iloc[::3].reset_index(drop=True), check_dtype=False)


# ---------------------------------------------------------------- cryoSPARC
def test_cs_p12_pose_parity_and_halfsets():
    f = cio.cs_fields(cio.read_cs(T("cryosparc_P12_J24_001_particles.cs")))
    rot, trans = ref_pkl("pose.cs.pkl")
    np.testing.assert_allclose(f["rot"], rot, atol=2e-6)
    np.testing.assert_allclose(f["shift_px"] / 180, trans, rtol=1e-5, atol=1e-7)
    assert f["D"] == 180 and set(np.unique(f["halfset"])) == {0, 1}
    # CTF fields against cryoDRGN's ctf2.pkl
    c = ref_pkl("ctf2.pkl")
    for j, k in enumerate(["defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift"]):
        np.testing.assert_allclose(f["ctf"][k], c[:, 2 + j], rtol=1e-6, atol=1e-4)


def _renamed_cs(tmp_path, new_prefix):
    a = cio.read_cs(T("cryosparc_P12_J24_001_particles.cs"))
    from numpy.lib import recfunctions as rfn
    b = rfn.rename_fields(a, {n: n.replace("alignments3D", new_prefix) for n in a.dtype.names if n.startswith("alignments3D")})
    np.save(tmp_path / "x.npy", b); (tmp_path / "x.npy").rename(tmp_path / "x.cs")
    return a, tmp_path / "x.cs"


def test_cs_abinit_and_hetrefine_flags(tmp_path):
    a, p = _renamed_cs(tmp_path, "alignments_class_0")
    m = cio.load_particles(p, abinit=True, require_images=False)
    ref = cio.load_particles(T("cryosparc_P12_J24_001_particles.cs"), require_images=False)
    torch.testing.assert_close(m.rotations, ref.rotations)
    h = cio.load_particles(T("cryosparc_P12_J24_001_particles.cs"), hetrefine=True, require_images=False)
    np.testing.assert_allclose(h.shifts_px, 2 * ref.shifts_px)
    np.testing.assert_allclose(ref.shifts_A.numpy(), ref.shifts_px * 2.95, rtol=1e-5)   # px × blob/psize_A
    with pytest.raises(cio.MissingColumnError, match="alignments_class_0"):
        cio.load_particles(T("cryosparc_P12_J24_001_particles.cs"), abinit=True, require_images=False)


def test_cs_paths_with_leading_marker_and_2d_only():
    m = cio.load_particles(T("cryosparc_J2_particles_exported.cs"), require_images=False)
    assert not m.images_found and all(not s.startswith(">") for s in m.stack_names)
    assert m.rotations is None and m.D == 300 and m.has_ctf


def test_cs_and_star_agree_on_real_particles():
    s = cio.load_particles(T("empiar_10076_7.star")); c = cio.load_particles(T("empiar_10076_7.cs"))
    np.testing.assert_array_equal(cio.read_images(s), cio.read_images(c))
    np.testing.assert_allclose(c.ctf_values["defocus_angle"], s.ctf_values["defocus_angle"], atol=1e-4)
    np.testing.assert_allclose(c.ctf_values["defocus_u"], s.ctf_values["defocus_u"], rtol=1e-6)
    assert c.apix == pytest.approx(s.apix, rel=1e-5)


# ---------------------------------------------------------------- .pkl, .txt
@pytest.mark.parametrize("name", ["pose.star.pkl", "pose.cs.pkl", "ctf1.pkl", "ctf2.pkl", "test_ctf.pkl", "toy_angles.pkl",
                                  "toy_rot_trans.pkl", "hand_rot.pkl", "hand_rot_trans.pkl", "ind100.pkl", "ind100-rand.pkl",
                                  "ind4.pkl", "ind5.pkl", "zvals_het-2_1k.pkl", "zvals_het-8_4k.pkl"])
def test_every_pkl_fixture_reads_safely(name):
    ref, got = ref_pkl(name), cio.read_pkl(T(name))
    for r, g in zip(ref if isinstance(ref, tuple) else (ref,), got if isinstance(got, tuple) else (got,)):
        np.testing.assert_array_equal(r, g)


def test_pkl_round_trips(tmp_path):
    rot, trans = cio.read_poses_pkl(T("hand_rot_trans.pkl"))
    cio.write_poses_pkl(tmp_path / "p.pkl", rot, trans)
    r2, t2 = cio.read_poses_pkl(tmp_path / "p.pkl")
    np.testing.assert_allclose(r2, rot, atol=1e-7); np.testing.assert_allclose(t2, trans, rtol=1e-6)
    c = cio.read_ctf_pkl(T("ctf2.pkl")); cio.write_ctf_pkl(tmp_path / "c.pkl", c)
    np.testing.assert_array_equal(ref_pkl("ctf2.pkl"), cio.read_ctf_pkl(tmp_path / "c.pkl"))


def test_txt_lists_and_pkl_inputs():
    m = cio.load_particles(T("toy_projections_2.txt"))
    assert len(m) == 2000 and m.D == 30
    full, _ = cio.read_stack(T("toy_projections.mrcs"))
    np.testing.assert_array_equal(cio.read_images(m, [1500]), full[[500]])
    m = cio.load_particles(T("toy_projections.txt"), poses=T("toy_rot_trans.pkl"), ctf=T("test_ctf.pkl"), ind=T("ind100-rand.pkl"))
    ind = ref_pkl("ind100-rand.pkl"); rot, trans = ref_pkl("toy_rot_trans.pkl")
    torch.testing.assert_close(m.rotations, torch.from_numpy(rot[ind]))
    np.testing.assert_allclose(m.shifts_A.numpy(), trans[ind] * 30 * 1.0, rtol=1e-5)   # t·D·apix
    assert m.ctf.phase_shift.eq(90).all()


def test_pkl_covering_only_the_selection():
    ind = [3, 1, 4]
    m = cio.load_particles(T("hand.mrcs"), poses=(ref_pkl("hand_rot.pkl")[ind], None), ind=ind)
    torch.testing.assert_close(m.rotations, torch.from_numpy(ref_pkl("hand_rot.pkl")[ind]))


def test_hand_stack_with_poses():
    m = cio.load_particles(T("hand.mrcs"), poses=T("hand_rot.pkl"))
    assert len(m) == 100 and m.D == 64 and m.apix == 1.0
    torch.testing.assert_close(m.rotations, torch.from_numpy(ref_pkl("hand_rot.pkl")))
    assert m.shifts_A.abs().max() == 0


# ---------------------------------------------------------------- structures


@pytest.mark.parametrize("dtype", ["<i2", "<u2", "<f2", ">f4", "i1"])
def test_stack_modes_and_byte_order(tmp_path, dtype):
    from cryonb.data import ParticleDataset
    x = (np.random.default_rng(3).normal(size=(6, 10, 10)) * 20).astype(dtype)
    with mrcfile.new(tmp_path / "m.mrcs") as m:
        m.set_data(x); m.set_image_stack(); m.voxel_size = 2.0
    ds = ParticleDataset(tmp_path / "m.mrcs")
    b = ds[np.arange(6)]
    assert b["images"].dtype == torch.float32 and ds.apix == pytest.approx(2.0)
    np.testing.assert_array_equal(b["images"].numpy(), x.astype(np.float32))
