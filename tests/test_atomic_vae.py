"""atomic_vae: the shared layer's pieces against things we did not write (numpy's corrcoef, the projection
layer's renderer, gemmi round trips, the input STAR file) and its bad-input errors."""
import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from cryonb import atomic_vae as av, projection, structure
from cryonb.core import InputError
from cryonb.io import write_star, read_star


class Lin(av.Deformer):
    def __init__(self, cg, zdim):
        super().__init__(cg, zdim); self.w = nn.Linear(zdim, 3 * self.n_res)
    def forward(self, z): return self.reference + self.w(z).reshape(z.shape[0], -1, 3)


def test_image_formation_is_the_projection_layers_per_image():
    "One forward model: per-image coords (B,N,3) through `ImageFormation(GaussianPotential)` = image-by-image rendering."
    cg = av.toy_cgmodel(20)
    g = torch.Generator().manual_seed(1)
    X = cg.coords[0] + torch.randn(3, 20, 3, generator=g)                 # one model per image
    R = torch.linalg.qr(torch.randn(3, 3, 3, generator=g))[0]; R = R * torch.linalg.det(R)[:, None, None]
    imf = av.image_formation(24, 1.5, cg, method="real")
    assert type(imf) is projection.ImageFormation and type(imf.potential) is projection.GaussianPotential
    got = imf(R, coords=X)
    want = torch.stack([projection.render_gmm_2d(X[i], cg.amplitudes, 2.0, R[i:i + 1], 24, 1.5)[0] for i in range(3)])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not hasattr(av, "render_batch") and not hasattr(av, "LocalImageFormation")


def test_pearson_against_numpy():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(4, 12, 12, generator=g); p = y + torch.randn(4, 12, 12, generator=g)
    M = av.circular_mask(12, 0.9)
    r = np.mean([np.corrcoef(a[M.numpy()], b[M.numpy()])[0, 1] for a, b in zip(p.numpy(), y.numpy())])
    assert abs(float(av.pearson_loss(p, y, M)) - (1 - r)) < 1e-5


def test_decode_map_matches_render_gmm_3d_and_pdb_roundtrip(tmp_path):
    torch.manual_seed(0)
    cg = av.toy_cgmodel(25)
    vae = av.AtomicVAE(av.MLPEncoder(16, 3, (8,)), Lin(cg, 3), av.image_formation(16, 3.0, cg))
    z = np.random.default_rng(0).normal(size=(40, 3)).astype(np.float32)
    vol = av.decode_map(vae, z[:1], 16, 3.0)[0]
    want = projection.render_gmm_3d(av.decode_coords(vae, z[:1])[0], cg.amplitudes, 2.0, 16, 3.0)
    torch.testing.assert_close(vol, want)
    km, order = av.export_kmeans(vae, z, tmp_path, k=4)
    m = structure.from_pdb(tmp_path / "pred.pdb")
    torch.testing.assert_close(m.coords, av.decode_coords(vae, km.centers[order]), atol=1e-3, rtol=0)
    assert list(m.resids) == list(cg.resids)


def test_cluster_stars_keep_rows_and_optics(tmp_path):
    parts = pd.DataFrame({"rlnImageName": [f"{i + 1}@s.mrcs" for i in range(10)], "rlnDefocusU": np.arange(10.0),
                          "rlnOpticsGroup": 1})
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnImagePixelSize": [2.0]})
    write_star(tmp_path / "p.star", parts, optics)
    ind = np.array([9, 1, 3, 5])                                 # a selection, in any order
    files = av.write_cluster_stars(tmp_path / "p.star", [0, 1, 0, 1], tmp_path / "o", ind=ind)
    p0, o0 = read_star(files[0]); p1, _ = read_star(files[1])
    assert list(p0.rlnDefocusU) == [3.0, 9.0] and list(p1.rlnDefocusU) == [1.0, 5.0]
    assert o0.rlnImagePixelSize[0] == 2.0
    with pytest.raises(InputError, match="p.star.*outside"):
        av.write_cluster_stars(tmp_path / "p.star", [0], tmp_path / "o", ind=[10])


def test_bad_inputs():
    with pytest.raises(InputError): av.circular_mask(8, 0)
    with pytest.raises(InputError): av.MLPEncoder(8, 0)
    with pytest.raises(InputError, match="expected"): av.MLPEncoder(8, 2, (4,))(torch.zeros(2, 6, 6))
