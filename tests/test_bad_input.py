"""Bad input gets a clear error (an `InputError` or `OSError` subclass) naming the file, the field and what was
expected. Broken files are made from the real fixtures in temporary folders. The second half is the catalogue of
bad inputs through `cryonb.cli.main`, one verb at a time: exit 2, `cryonb <verb>: error:` naming the offending
file, no traceback, no output left behind."""
import os, pickle, shutil

import numpy as np
import pytest

from cryonb import cli
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


# ================================================================ the CLI catalogue
REG = T("ind5.pkl").parent / "regressions"


def _copy(tmp, name, new=None):
    shutil.copy(T(name), tmp / (new or name))
    return tmp / (new or name)


def _star(tmp, name, edit, images=True):
    "relion31.star with `edit(particles, optics)` applied (returns the tables to write)."
    p, o = cio.read_star(T("relion31.star"))
    p, o = edit(p.copy(), o.copy())
    cio.write_star(tmp / name, p, o)
    if images:
        _copy(tmp, "relion31.mrcs")
    return tmp / name


def _set(col, value, row=1, table="p"):
    def edit(p, o):
        t = p if table == "p" else o
        t[col] = t[col].astype(object)
        t.loc[row, col] = value
        return p, o
    return edit


def _drop(col, table="p"):
    def edit(p, o):
        if table == "p":
            return p.drop(columns=[col]), o
        return p, o.drop(columns=[col])
    return edit


def _cs(tmp, name, edit, src="cryosparc_P12_J24_001_particles.cs"):
    a = cio.read_cs(T(src)).copy()
    a = edit(a)
    np.save(tmp / "tmp.npy", a)
    os.replace(tmp / "tmp.npy", tmp / name)
    return tmp / name


def _cs_set(field, value, row=3):
    def edit(a):
        a[field][row] = value
        return a
    return edit


def _cs_drop(field):
    def edit(a):
        keep = [n for n in a.dtype.names if n != field]
        out = np.empty(len(a), dtype=[(n, a.dtype[n]) for n in keep])
        for n in keep:
            out[n] = a[n]
        return out
    return edit


def _bytes(tmp, name, data):
    (tmp / name).write_bytes(data)
    return tmp / name


def _truncated(tmp, name="hand.mrcs", keep=1024 + 64 * 64 * 4 * 3 + 7):
    return _bytes(tmp, name, T(name).read_bytes()[:keep])


def _mrc(tmp, name, data, apix=1.0):
    import mrcfile
    with mrcfile.new(tmp / name) as m:
        m.set_data(np.asarray(data, np.float32))
        m.voxel_size = apix
    return tmp / name


def _pkl(tmp, name, obj):
    with open(tmp / name, "wb") as f:
        pickle.dump(obj, f)
    return tmp / name


def _rot(n, bad=None):
    r = np.repeat(np.eye(3, dtype=np.float32)[None], n, 0)
    if bad is not None:
        r[2, 0, 0] = bad
    return r


# Each case: id -> (make(tmp) -> (argv, offending file name)). Outputs go to tmp/"out*".
def _verb(*argv_template):
    "A case from `make(tmp) -> file`: argv with `{f}` replaced by the file and `{t}` by the folder."
    def wrap(make, *extra):
        def case(t):
            f = make(t)
            return [a.format(f=f, t=t) for a in argv_template] + list(extra), f.name
        return case
    return wrap


_pose = _verb("parse-pose", "{f}", "-D", "64", "-o", "{t}/out.pkl")
_ctfv = _verb("parse-ctf", "{f}", "-D", "64", "--Apix", "1.0", "-o", "{t}/out.pkl")
_info = _verb("info", "{f}")
_down = _verb("downsample", "{f}", "-D", "32", "-o", "{t}/out.mrcs")


S = _star
CASES = {
    # ---------------------------------------------------------------- info
    "info-missing-file": lambda t: (["info", str(t / "absent.mrcs")], "absent.mrcs"),
    "info-empty-mrc": _info(lambda t: _bytes(t, "empty.mrc", b"")),
    "info-text-as-mrc": _info(lambda t: _bytes(t, "junk.mrc", b"hello world\n" * 100)),
    "info-truncated-mrcs": _info(lambda t: _truncated(t)),
    "info-garbage-star": _info(lambda t: _bytes(t, "junk.star", b"\x00\xff\xfe binary \x01" * 50)),
    "info-garbage-cs": _info(lambda t: _bytes(t, "junk.cs", os.urandom(300))),
    "info-cs-not-structured": lambda t: (np.save(t / "a.npy", np.zeros(5)), os.replace(t / "a.npy", t / "plain.cs"),
                                         (["info", str(t / "plain.cs")], "plain.cs"))[-1],
    "info-pkl-none": _info(lambda t: _pkl(t, "none.pkl", None)),
    "info-pkl-evil": _info(lambda t: _bytes(t, "evil.pkl", b"cos\nsystem\n(S'true'\ntR.")),
    "info-pkl-laughs": _info(lambda t: _bytes(t, "laughs.pkl", (REG / "pkl_billion_laughs.pkl").read_bytes())),
    "info-pkl-truncated": _info(lambda t: _bytes(t, "cut.pkl", T("hand_rot.pkl").read_bytes()[:100])),
    "info-pkl-text": _info(lambda t: _bytes(t, "text.pkl", b"not a pickle at all")),
    "info-unsupported-ext": _info(lambda t: _bytes(t, "x.h5", b"\x89HDF")),
    "info-txt-missing-stack": _info(lambda t: _bytes(t, "list.txt", b"missing_stack.mrcs\n")),
    # ---------------------------------------------------------------- parse-pose
    "pose-star-nan-rot": _pose(lambda t: S(t, "nanrot.star", _set("rlnAngleRot", np.nan))),
    "pose-star-inf-tilt": _pose(lambda t: S(t, "inftilt.star", _set("rlnAngleTilt", np.inf))),
    "pose-star-nan-origin": _pose(lambda t: S(t, "nanorig.star", _set("rlnOriginXAngst", np.nan))),
    "pose-star-inf-origin": _pose(lambda t: S(t, "inforig.star", _set("rlnOriginYAngst", -np.inf))),
    "pose-star-text-angle": _pose(lambda t: S(t, "xangle.star", _set("rlnAnglePsi", "x"))),
    "pose-star-no-tilt": _pose(lambda t: S(t, "notilt.star", _drop("rlnAngleTilt"))),
    "pose-star-empty-table": _pose(lambda t: S(t, "empty.star", lambda p, o: (p.iloc[:0], o))),
    "pose-star-garbage": _pose(lambda t: _bytes(t, "garbage.star", b"data_\nloop_\n_rlnAngleRot\n\xff\xfe\n")),
    "pose-star-unknown-optics": _pose(lambda t: S(t, "optics.star", _set("rlnOpticsGroup", 9))),
    "pose-star-index-past-end": _pose(lambda t: S(t, "past.star", _set("rlnImageName", "000009@relion31.mrcs"))),
    "pose-cs-nan-pose": _pose(lambda t: _cs(t, "nanpose.cs", _cs_set("alignments3D/pose", np.nan))),
    "pose-cs-inf-shift": _pose(lambda t: _cs(t, "infshift.cs", _cs_set("alignments3D/shift", np.inf))),
    "pose-cs-no-pose": _pose(lambda t: _cs(t, "nopose.cs", lambda a: a, src="empiar_10076_7.cs")),
    "pose-cs-garbage": _pose(lambda t: _bytes(t, "garbage.cs", b"\x93NUMPY" + os.urandom(200))),
    "pose-cs-truncated": _pose(lambda t: _bytes(t, "cut.cs", T("cryosparc_P12_J24_001_particles.cs").read_bytes()[:5000])),
    "pose-missing-input": lambda t: (["parse-pose", str(t / "absent.star"), "-D", "64", "-o", str(t / "out.pkl")],
                                     "absent.star"),
    "pose-apix-zero": lambda t: (["parse-pose", str(S(t, "ok.star", lambda p, o: (p, o))), "-D", "64", "--Apix", "0",
                                  "-o", str(t / "out.pkl")], "--Apix"),
    "pose-apix-negative": lambda t: (["parse-pose", str(S(t, "ok.star", lambda p, o: (p, o))), "-D", "64",
                                      "--Apix", "-1.5", "-o", str(t / "out.pkl")], "--Apix"),
    "pose-D-zero": lambda t: (["parse-pose", str(S(t, "ok.star", lambda p, o: (p, o))), "-D", "0",
                               "-o", str(t / "out.pkl")], "-D"),
    # ---------------------------------------------------------------- parse-ctf
    "ctf-star-nan-defocus": _ctfv(lambda t: S(t, "nandf.star", _set("rlnDefocusU", np.nan))),
    "ctf-star-inf-defocus": _ctfv(lambda t: S(t, "infdf.star", _set("rlnDefocusV", np.inf))),
    "ctf-star-text-defocus": _ctfv(lambda t: S(t, "xdf.star", _set("rlnDefocusU", "x"))),
    "ctf-star-no-defocus": _ctfv(lambda t: S(t, "nodf.star", _drop("rlnDefocusU"))),
    "ctf-star-nan-voltage": _ctfv(lambda t: S(t, "nankv.star", _set("rlnVoltage", np.nan, row=0, table="o"))),
    "ctf-star-empty-table": _ctfv(lambda t: S(t, "empty.star", lambda p, o: (p.iloc[:0], o))),
    "ctf-cs-nan-defocus": _ctfv(lambda t: _cs(t, "nandf.cs", _cs_set("ctf/df1_A", np.nan))),
    "ctf-cs-no-defocus": _ctfv(lambda t: _cs(t, "nodf.cs", _cs_drop("ctf/df1_A"))),
    "ctf-cs-garbage": _ctfv(lambda t: _bytes(t, "garbage.cs", os.urandom(500))),
    "ctf-missing-input": lambda t: (["parse-ctf", str(t / "absent.cs"), "-D", "64", "--Apix", "1",
                                     "-o", str(t / "out.pkl")], "absent.cs"),
    "ctf-apix-zero": lambda t: (["parse-ctf", str(S(t, "ok.star", lambda p, o: (p, o))), "-D", "64", "--Apix", "0",
                                 "-o", str(t / "out.pkl")], "--Apix"),
    "ctf-kv-negative": lambda t: (["parse-ctf", str(S(t, "ok.star", lambda p, o: (p, o))), "-D", "64",
                                   "--kv", "-300", "-o", str(t / "out.pkl")], "--kv"),
    "ctf-w-above-one": lambda t: (["parse-ctf", str(S(t, "ok.star", lambda p, o: (p, o))), "-D", "64",
                                   "-w", "1.5", "-o", str(t / "out.pkl")], "-w"),
    # ---------------------------------------------------------------- downsample
    "down-missing-input": lambda t: (["downsample", str(t / "absent.mrcs"), "-D", "32", "-o", str(t / "out.mrcs")],
                                     "absent.mrcs"),
    "down-truncated-stack": _down(lambda t: _truncated(t)),
    "down-non-square-stack": _down(lambda t: _mrc(t, "rect.mrcs", np.zeros((3, 16, 20)))),
    "down-D-larger-than-box": lambda t: (["downsample", str(_copy(t, "hand.mrcs")), "-D", "128",
                                          "-o", str(t / "out.mrcs")], "hand.mrcs"),
    "down-D-odd": lambda t: (["downsample", str(_copy(t, "hand.mrcs")), "-D", "33", "-o", str(t / "out.mrcs")], "-D"),
    "down-D-zero": lambda t: (["downsample", str(_copy(t, "hand.mrcs")), "-D", "0", "-o", str(t / "out.mrcs")], "-D"),
    "down-chunk-zero": lambda t: (["downsample", str(_copy(t, "hand.mrcs")), "-D", "32", "--chunk", "0",
                                   "-o", str(t / "out.mrcs")], "--chunk"),
    "down-non-cubic-map": lambda t: (["downsample", str(_mrc(t, "flat.mrc", np.zeros((8, 16, 16)))), "--is-vol",
                                      "-D", "8", "-o", str(t / "out.mrc")], "flat.mrc"),
    "down-star-no-image-name": _down(lambda t: S(t, "noname.star", _drop("rlnImageName"))),
    "down-star-stack-nowhere": _down(lambda t: S(t, "nowhere.star", lambda p, o: (p, o), images=False)),
    "down-pkl-input": _down(lambda t: _copy(t, "hand_rot.pkl")),
    "down-text-as-mrcs": _down(lambda t: _bytes(t, "text.mrcs", b"this is not an MRC file" * 100)),
    # ---------------------------------------------------------------- backproject (reconstruction helper's verb)
    "bp-poses-nan-rotation": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses",
                                         str(_pkl(t, "nanrot.pkl", (_rot(100, np.nan), np.zeros((100, 2), np.float32)))),
                                         "-o", str(t / "out.mrc")], "nanrot.pkl"),
    "bp-poses-inf-rotation": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses",
                                         str(_pkl(t, "infrot.pkl", _rot(100, np.inf))), "-o", str(t / "out.mrc")],
                                        "infrot.pkl"),
    "bp-poses-wrong-shape": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses",
                                        str(_pkl(t, "shape.pkl", np.zeros((100, 3)))), "-o", str(t / "out.mrc")],
                                       "shape.pkl"),
    "bp-poses-count-mismatch": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses",
                                           str(_pkl(t, "short.pkl", _rot(7))), "-o", str(t / "out.mrc")],
                                          "short.pkl"),
    "bp-poses-none": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses",
                                 str(_pkl(t, "none.pkl", None)), "-o", str(t / "out.mrc")], "none.pkl"),
    "bp-ctf-wrong-shape": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses", str(T("hand_rot.pkl")),
                                      "--ctf", str(_pkl(t, "ctf8.pkl", np.zeros((100, 8), np.float32))),
                                      "-o", str(t / "out.mrc")], "ctf8.pkl"),
    "bp-ind-past-end": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses", str(T("hand_rot.pkl")),
                                   "--ind", str(_pkl(t, "ind.pkl", np.array([0, 1, 500]))),
                                   "-o", str(t / "out.mrc")], "ind.pkl"),
    "bp-ind-floats": lambda t: (["backproject", str(_copy(t, "hand.mrcs")), "--poses", str(T("hand_rot.pkl")),
                                 "--ind", str(_pkl(t, "indf.pkl", np.array([0.5, 1.5]))),
                                 "-o", str(t / "out.mrc")], "indf.pkl"),
    "bp-truncated-stack": lambda t: (["backproject", str(_truncated(t)), "--poses", str(T("hand_rot.pkl")),
                                      "-o", str(t / "out.mrc")], "hand.mrcs"),
    # ---------------------------------------------------------------- fsc / postprocess (reconstruction helper)
    "fsc-missing-map": lambda t: (["fsc", str(_copy(t, "toymodel_small_nocenter.mrc")), str(t / "absent.mrc"),
                                   "-o", str(t / "out.txt")], "absent.mrc"),
    "fsc-truncated-map": lambda t: (["fsc", str(_copy(t, "toymodel_small_nocenter.mrc")),
                                     str(_bytes(t, "cut.mrc", T("toymodel_small_nocenter.mrc").read_bytes()[:3000])),
                                     "-o", str(t / "out.txt")], "cut.mrc"),
    "fsc-box-mismatch": lambda t: (["fsc", str(_mrc(t, "a16.mrc", np.ones((16, 16, 16)))),
                                    str(_mrc(t, "b20.mrc", np.ones((20, 20, 20)))), "-o", str(t / "out.txt")], "b20.mrc"),
    "fsc-non-cubic": lambda t: (["fsc", str(_mrc(t, "a.mrc", np.ones((8, 16, 16)))),
                                 str(_mrc(t, "b.mrc", np.ones((8, 16, 16)))), "-o", str(t / "out.txt")], "a.mrc"),
    "postprocess-missing-half": lambda t: (["postprocess", "--i", str(_copy(t, "toymodel_small_nocenter.mrc")),
                                            "--i2", str(t / "absent_half2.mrc"), "--o", str(t / "out")],
                                           "absent_half2.mrc"),
    # ---------------------------------------------------------------- reconstruct / center-origin
    "reconstruct-star-nan-angle": lambda t: (["reconstruct", "--i", str(S(t, "nan.star", _set("rlnAngleRot", np.nan))),
                                              "--o", str(t / "out.mrc")], "nan.star"),
    "reconstruct-missing-star": lambda t: (["reconstruct", "--i", str(t / "absent.star"), "--o", str(t / "out.mrc")],
                                           "absent.star"),
    "center-origin-truncated-map": lambda t: (["center-origin", "--pdb", str(_copy(t, "adk_closed_1ake.pdb")),
                                               "--mrc", str(_bytes(t, "cut.mrc",
                                                                   T("toymodel_small_nocenter.mrc").read_bytes()[:2000])),
                                               "-o", str(t / "out")], "cut.mrc"),
    "center-origin-missing-pdb": lambda t: (["center-origin", "--pdb", str(t / "absent.pdb"), "--mrc",
                                             str(_copy(t, "toymodel_small_nocenter.mrc")), "-o", str(t / "out")], "absent.pdb"),
    # ---------------------------------------------------------------- analyze / sieve / recovar (other helpers)
    "analyze-z-pkl-none": lambda t: (["analyze", str(_pkl(t, "znone.pkl", None)), "-o", str(t / "out")], "znone.pkl"),
    "analyze-z-nan": lambda t: (["analyze", str(_pkl(t, "znan.pkl", np.full((50, 2), np.nan, np.float32))),
                                 "-o", str(t / "out")], "znan.pkl"),
    "analyze-z-missing": lambda t: (["analyze", str(t / "absent_z.pkl"), "-o", str(t / "out")], "absent_z.pkl"),
    "sieve-star-nan-angle": lambda t: (["sieve", "--i", str(S(t, "nan.star", _set("rlnAngleRot", np.nan))),
                                        "--o", str(t / "out")], "nan.star"),
    "recovar-poses-nan-rotation": lambda t: (["recovar", "pipeline", str(_copy(t, "hand.mrcs")), "-o", str(t / "out"),
                                              "--poses", str(_pkl(t, "nanrot.pkl", _rot(100, np.nan)))], "nanrot.pkl"),
    "reconstruct-angpix-zero": lambda t: (["reconstruct", "--i", str(S(t, "ok.star", lambda p, o: (p, o))),
                                           "--angpix", "0", "--o", str(t / "out.mrc")], "--angpix"),
    "fsc-apix-negative": lambda t: (["fsc", str(_copy(t, "toymodel_small_nocenter.mrc")),
                                     str(_copy(t, "toymodel_small_nocenter.mrc", "b.mrc")), "--apix", "-2",
                                     "-o", str(t / "out.txt")], "--apix"),
}

XFAIL = {}   # case id -> reason, only for cases verified to fail because of another helper's area


def _params():
    for k in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=XFAIL[k])] if k in XFAIL else []
        yield pytest.param(k, id=k, marks=marks)


@pytest.mark.parametrize("case", list(_params()))
def test_bad_input_exits_2_with_a_clear_message(case, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CRYONB_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    argv, name = CASES[case](tmp_path)
    before = set(os.listdir(tmp_path))
    try:
        rc = cli.main(argv)
    except SystemExit as e:
        rc = e.code
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out[-500:], err[-2000:])
    verb = argv[0]
    assert f"cryonb {verb}: error:" in err, err[-2000:]
    assert name in err, err[-2000:]
    assert "Traceback" not in err + out
    left = [f for f in set(os.listdir(tmp_path)) - before]
    assert not left, f"files left behind: {left}"
    assert not any(f.startswith("out") for f in os.listdir(tmp_path)), os.listdir(tmp_path)


def test_catalogue_is_large():
    assert len(CASES) >= 60


def test_info_suggests_datadir_and_prints_short_numbers(tmp_path, capsys):
    _star(tmp_path, "nowhere.star", lambda p, o: (p, o), images=False)
    assert cli.main(["info", str(tmp_path / "nowhere.star"), str(T("ctf1.pkl")),
                     str(T("cryosparc_P12_J24_001_particles.cs"))]) == 0
    out = capsys.readouterr().out
    assert "--datadir" in out and "None" not in out
    assert "pixel size: 2.95 Å" in out and "2.950000047" not in out   # the .cs stores float32 2.95
    assert "Apix [1.035]" in out and "0.10000000149" not in out      # float32 values not echoed with 16 digits
