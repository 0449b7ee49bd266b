"""cryonb.synthetic: the test-data generators agree with the package's forward model and with analytic identities."""
import numpy as np
import pytest
import starfile
import torch

from cryonb import synthetic
from cryonb.core import InputError
from cryonb.fourier import ifft2c
from cryonb.geometry import random_rotations
from cryonb.io import read_ctf_pkl, read_map, read_poses_pkl, read_stack
from cryonb.projection import prepare_volume, project_ft


def _blobs(seed=0, k=6, D=32, apix=2.0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-0.2, 0.2, (k, 3)) * D * apix, rng.uniform(0.5, 1.5, k)


def test_blob_volume_peak_and_integral():
    # one blob at the box centre: peak voxel = amplitude, voxel sum = a (√(2π) σ/apix)³ (Gaussian integral)
    D, apix, s = 32, 2.0, 3.0
    v = synthetic.blob_volume(np.zeros((1, 3)), D, apix, s, torch.tensor([2.0], dtype=torch.float64))
    assert v.shape == (D, D, D) and np.unravel_index(v.argmax(), v.shape) == (D // 2,) * 3
    assert abs(v.max() - 2.0) < 1e-9
    assert abs(v.sum() - 2.0 * (np.sqrt(2 * np.pi) * s / apix) ** 3) < 1e-6 * v.sum()


def test_blob_projections_match_fourier_slice_projection():
    # analytic projections vs the package's Fourier-slice operator on the rendered map (independent routes)
    D, apix, s = 32, 2.0, 3.0
    c, a = _blobs(1, D=D, apix=apix)
    a = torch.as_tensor(a)
    vol = synthetic.blob_volume(c, D, apix, s, a)
    R = random_rotations(5, seed=2).double()
    analytic = synthetic.blob_projections(c, R.numpy(), D, apix, s, a)
    fs = ifft2c(project_ft(prepare_volume(torch.as_tensor(vol), oversampling=2), R)).real.numpy()
    assert analytic.shape == (5, D, D)
    np.testing.assert_allclose(analytic.sum(axis=(1, 2)), vol.sum(), rtol=1e-6)      # projection keeps the integral
    err = np.linalg.norm(fs - analytic) / np.linalg.norm(analytic)
    assert err < 0.02, err
    # identity pose: the analytic projection is the voxel sum along z
    np.testing.assert_allclose(synthetic.blob_projections(c, np.eye(3)[None], D, apix, s, a)[0], vol.sum(0), atol=1e-9 * vol.max())


def test_blob_dataset_files_and_junk(tmp_path):
    d = synthetic.blob_dataset(tmp_path, n=40, D=16, apix=2.5, junk_fraction=0.25, noise_sigma=2.0, seed=9)
    blocks = starfile.read(d["star"], always_dict=True)
    df = blocks["particles"]
    assert len(df) == 40 and set(df["rlnRandomSubset"]) == {1, 2}
    assert float(blocks["optics"]["rlnImagePixelSize"].iloc[0]) == 2.5
    assert d["junk"].sum() == 10
    img = np.asarray(read_stack(d["stack"])[0])
    assert img.shape == (40, 16, 16)
    # noise-only junk: white noise of the requested sigma
    assert abs(img[d["junk"]].std() - 2.0) < 0.15
    vol, apix = read_map(d["map"])
    assert abs(apix - 2.5) < 1e-4
    np.testing.assert_allclose(np.asarray(vol), d["volume"], rtol=1e-5, atol=1e-6)
    m = np.asarray(read_map(d["mask"])[0])
    assert m.min() >= 0 and m.max() <= 1 and m[8, 8, 8] == 1
    # reproducible
    e = synthetic.blob_dataset(tmp_path / "again", n=40, D=16, apix=2.5, junk_fraction=0.25, noise_sigma=2.0, seed=9)
    np.testing.assert_array_equal(np.asarray(read_stack(e["stack"])[0]), img)
    with pytest.raises(InputError, match="junk_kind"):
        synthetic.blob_dataset(tmp_path / "bad", n=4, D=16, junk_kind="ice")


def test_synthetic_dataset_and_files(tmp_path):
    syn = synthetic.synthetic_dataset(D=16, n=60, n_states=3, snr=0.5, apix=3.0, shifts=True, seed=4)
    assert syn["images"].shape == (60, 16, 16) and syn["volumes"].shape == (3, 16, 16, 16)
    assert set(np.unique(syn["labels"])) <= {0, 1, 2} and syn["rotations"].shape == (60, 3, 3)
    assert torch.allclose(syn["rotations"] @ syn["rotations"].transpose(1, 2), torch.eye(3).expand(60, 3, 3), atol=1e-5)
    # the states differ, and the noise level matches snr
    assert (syn["volumes"][1] - syn["volumes"][0]).abs().max() > 0.1
    assert abs(syn["images"].var(dim=(-2, -1)).mean().item() / syn["noise_var"] - 1.5) < 0.2   # signal + noise = (1/snr + 1)·noise
    again = synthetic.synthetic_dataset(D=16, n=60, n_states=3, snr=0.5, apix=3.0, shifts=True, seed=4)
    assert torch.equal(again["images"], syn["images"])
    paths = synthetic.write_synthetic(syn, tmp_path)
    rot, trans = read_poses_pkl(paths["poses"])
    np.testing.assert_allclose(np.asarray(rot), syn["rotations"].numpy(), atol=1e-6)
    np.testing.assert_allclose(np.asarray(trans) * 16 * 3.0, syn["shifts_A"].numpy(), atol=1e-5)
    ctf = read_ctf_pkl(paths["ctf"])
    np.testing.assert_allclose(ctf[:, 2], syn["defocus"].numpy(), rtol=1e-6)
    np.testing.assert_array_equal(np.load(paths["labels"]), syn["labels"])
    with pytest.raises(InputError):
        synthetic.synthetic_dataset(n_states=0)
    with pytest.raises(InputError):
        synthetic.synthetic_dataset(snr=0)


def test_test_data_path():
    assert synthetic.test_data_path("relion31.star").is_file()
    with pytest.raises(FileNotFoundError, match="no_such_fixture"):
        synthetic.test_data_path("no_such_fixture.star")
