"""Bad input gets a clear error (a ValueError or FileNotFoundError subclass) naming the file, the field
and what was expected. Broken files are made from the real fixtures in temporary folders."""
import os, pickle, shutil

import numpy as np
import pytest

from cryonb import io as cio
from cryonb.data import ParticleDataset
from cryonb.synthetic import test_data_path as T


def _copy(tmp_path, *names):
    for n in names: shutil.copy(T(n), tmp_path / n)


# ---------------------------------------------------------------- truncated stack
def test_truncated_mrcs(tmp_path):
    p = tmp_path / "hand.mrcs"
    data = T("hand.mrcs").read_bytes()
    p.write_bytes(data[:1024 + 64 * 64 * 4 * 40 + 100])        # 40 whole images and a bit
    with pytest.raises(cio.TruncatedFileError) as e:
        cio.read_stack(p)
    msg = str(e.value)
    assert str(p) in msg and "nz=100" in msg and "40 complete" in msg
    assert isinstance(e.value, ValueError)
    with pytest.raises(cio.TruncatedFileError):             # also through the dataset
        ParticleDataset(p)


def test_not_an_mrc(tmp_path):
    p = tmp_path / "junk.mrcs"; p.write_bytes(b"hello")
    with pytest.raises(cio.CryoFormatError, match="junk.mrcs"):
        cio.read_stack(p)


# ---------------------------------------------------------------- star without a required column
def test_star_without_image_name(tmp_path):
    p, o = cio.read_star(T("relion31.star"))
    cio.write_star(tmp_path / "noname.star", p.drop(columns=["rlnImageName"]), o)
    with pytest.raises(cio.MissingColumnError) as e:
        cio.load_particles(tmp_path / "noname.star")
    assert "noname.star" in str(e.value) and "rlnImageName" in str(e.value) and "index@stack" in str(e.value)


def test_star_with_incomplete_euler_angles(tmp_path):
    p, o = cio.read_star(T("relion31.star"))
    _copy(tmp_path, "relion31.mrcs")
    cio.write_star(tmp_path / "notilt.star", p.drop(columns=["rlnAngleTilt"]), o)
    with pytest.raises(cio.MissingColumnError, match=r"notilt.star.*rlnAngleTilt"):
        cio.load_particles(tmp_path / "notilt.star")


def test_star_ctf_without_amplitude_contrast_names_the_field():
    m = cio.load_particles(T("FinalRefinement-OriginalParticles-PfCRT.star"), require_images=False)
    with pytest.raises(cio.MissingColumnError, match="rlnAmplitudeContrast"):
        m.ctf_array(D=300)


def test_unknown_optics_group(tmp_path):
    p, o = cio.read_star(T("relion31.star"))
    p.loc[2, "rlnOpticsGroup"] = 7
    cio.write_star(tmp_path / "g.star", p, o)
    with pytest.raises(cio.CryoFormatError, match=r"g.star.*\[7\]"):
        cio.load_particles(tmp_path / "g.star", require_images=False)


# ---------------------------------------------------------------- index past the end
def test_image_index_past_end_of_stack(tmp_path):
    p, o = cio.read_star(T("relion31.star"))
    _copy(tmp_path, "relion31.mrcs")
    p.loc[3, "rlnImageName"] = "000006@relion31.mrcs"
    cio.write_star(tmp_path / "past.star", p, o)
    with pytest.raises(cio.ImageIndexError) as e:
        cio.load_particles(tmp_path / "past.star")
    msg = str(e.value)
    assert "past.star" in msg and "image 6" in msg and "relion31.mrcs" in msg and "holds 5 images" in msg


def test_selection_index_past_end():
    with pytest.raises(cio.ImageIndexError, match="100"):
        cio.load_particles(T("hand.mrcs"), ind=[0, 100])


# ---------------------------------------------------------------- stack path resolving nowhere
def test_stack_path_resolves_nowhere_lists_paths_tried(tmp_path):
    shutil.copy(T("toy_projections_dir.star"), tmp_path / "d.star")
    with pytest.raises(cio.StackNotFoundError) as e:
        cio.load_particles(tmp_path / "d.star", datadir=tmp_path / "nowhere")
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)
    assert "d.star" in msg and "2 of 2 image stacks not found" in msg
    for stack in ("toy_images_a.mrcs", "toy_images_b.mrcs"):
        assert str(tmp_path / "nowhere" / stack) in msg and str(tmp_path / stack) in msg
    # and with the right datadir it loads
    assert len(cio.load_particles(tmp_path / "d.star", datadir=T("toy_datadir"))) == 1000


def test_txt_list_with_missing_stack(tmp_path):
    (tmp_path / "l.txt").write_text("missing.mrcs\n")
    with pytest.raises(cio.StackNotFoundError, match="missing.mrcs"):
        cio.load_particles(tmp_path / "l.txt")


# ---------------------------------------------------------------- non-square images
def test_non_square_images(tmp_path):
    import mrcfile
    with mrcfile.new(tmp_path / "rect.mrcs") as m:
        m.set_data(np.zeros((3, 16, 20), np.float32))
    with pytest.raises(cio.NonSquareImageError, match=r"rect.mrcs.*16×20"):
        cio.read_stack(tmp_path / "rect.mrcs")
    with pytest.raises(cio.NonSquareImageError):
        ParticleDataset(tmp_path / "rect.mrcs")
    (tmp_path / "s.star").write_text("data_\nloop_\n_rlnImageName\n1@rect.mrcs\n")
    with pytest.raises(cio.NonSquareImageError, match="rect.mrcs"):
        cio.load_particles(tmp_path / "s.star")


def test_non_square_cs_blob_shape(tmp_path):
    a = cio.read_cs(T("empiar_10076_7.cs")).copy()
    a["blob/shape"][:, 1] = 300
    np.save(tmp_path / "x.npy", a); os.rename(tmp_path / "x.npy", tmp_path / "x.cs")
    with pytest.raises(cio.NonSquareImageError, match="blob/shape"):
        cio.load_particles(tmp_path / "x.cs", require_images=False)


# ---------------------------------------------------------------- .pkl holding anything but arrays
class Payload:
    def __reduce__(self): return (os.system, ("touch cryonb_pwned",))


class Plain:
    pass


@pytest.mark.parametrize("obj,match", [(Payload(), "posix.system|os.system"),
                                       (Plain(), "Plain"),
                                       ({"z": np.array([1, None], dtype=object)}, "dtype object|refused"),
                                       ((np.eye(3)[None], {1, 2}), "builtins.set|set")])
def test_pkl_with_non_arrays_is_refused(tmp_path, obj, match):
    p = tmp_path / "x.pkl"
    with open(p, "wb") as f: pickle.dump(obj, f)
    with pytest.raises(cio.UnsafePickleError, match=match) as e:
        cio.read_pkl(p)
    assert "x.pkl" in str(e.value) and isinstance(e.value, ValueError)
    assert not os.path.exists("cryonb_pwned")


def test_pose_pkl_wrong_layouts(tmp_path):
    cio.write_pkl(tmp_path / "a.pkl", np.zeros((4, 3)))
    with pytest.raises(cio.CryoFormatError, match=r"a.pkl.*\(N, 3, 3\)"):
        cio.read_poses_pkl(tmp_path / "a.pkl")
    cio.write_pkl(tmp_path / "b.pkl", np.zeros((4, 8), np.float32))
    with pytest.raises(cio.CryoFormatError, match=r"b.pkl.*\(N, 9\)"):
        cio.read_ctf_pkl(tmp_path / "b.pkl")
    with pytest.raises(cio.CryoFormatError, match="expected 100"):       # pose count vs particle count
        cio.load_particles(T("hand.mrcs"), poses=T("toy_angles.pkl"))


# ---------------------------------------------------------------- NaN / Inf images
def test_nan_inf_images_detected_with_indices(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 8, 8)).astype(np.float32)
    x[4, 1, 1] = np.nan; x[11, 3, 3] = -np.inf; x[19, 0, 0] = np.inf
    cio.write_stack(tmp_path / "nan.mrcs", x, 1.0)
    ds = ParticleDataset(tmp_path / "nan.mrcs")
    assert ds.find_nonfinite().tolist() == [4, 11, 19]
    with pytest.raises(cio.NonFiniteImageError) as e:
        next(iter(ds.loader(batch_size=8, device="cpu")))
    assert "[4]" in str(e.value) and "nan.mrcs" in str(e.value)
    with pytest.raises(cio.NonFiniteImageError, match=r"\[4, 11, 19\]"):
        ds[np.arange(20)]
    assert ds[[0, 1]]["images"].isfinite().all()


def test_unsupported_extension(tmp_path):
    (tmp_path / "x.h5").write_text("")
    with pytest.raises(cio.CryoFormatError, match="unsupported"):
        cio.load_particles(tmp_path / "x.h5")
    with pytest.raises(FileNotFoundError, match="nope.star"):
        cio.load_particles(tmp_path / "nope.star")
