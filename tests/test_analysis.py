"""Tests of cryonb.analysis on synthetic latents with known answers and on cryoDRGN's real zvals fixtures."""
import warnings
import numpy as np
import pytest
import torch
from scipy.stats import gaussian_kde
from sklearn.decomposition import PCA as skPCA

from cryonb.analysis import (as_latents, nearest_point, pca, umap_embedding, kmeans, pc_traversal, kde_density,
                             density_grid, density_path, linear_path, resample_path, farthest_pair, analyze_latents)
from cryonb.core import InputError
from cryonb.io import read_pkl
from cryonb.synthetic import test_data_path as data_path


@pytest.fixture(scope="module")
def zreal():
    return {name: as_latents(data_path(name)) for name in ("zvals_het-8_4k.pkl", "zvals_het-2_1k.pkl")}


def test_inputs(tmp_path):
    z = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    np.save(tmp_path / "z.npy", z)
    np.testing.assert_allclose(as_latents(tmp_path / "z.npy"), z)
    np.testing.assert_allclose(as_latents(torch.from_numpy(z)), z)
    with pytest.raises(FileNotFoundError, match="missing.npy"):
        as_latents(tmp_path / "missing.npy")
    with pytest.raises(InputError, match="non-finite"):
        as_latents(np.array([[np.inf]]))
    with pytest.raises(ValueError):  # InputError is a ValueError
        as_latents(np.zeros((2, 2, 2)))


def test_pca_matches_sklearn_on_real(zreal):
    for z in zreal.values():
        p, sk = pca(z), skPCA().fit(z)
        np.testing.assert_allclose(p.explained_variance, sk.explained_variance_, rtol=1e-6)
        np.testing.assert_allclose(p.explained_variance_ratio.sum(), 1.0)
        # same axes up to sign; our sign rule: largest loading positive
        np.testing.assert_allclose(np.abs(p.components @ sk.components_.T), np.eye(z.shape[1]), atol=1e-6)
        assert (p.components[np.arange(len(p.components)), np.abs(p.components).argmax(1)] > 0).all()


def test_kmeans_on_data_centres(zreal):
    z = zreal["zvals_het-8_4k.pkl"]
    km = kmeans(z, 20, seed=1, n_init=2)
    assert km.labels.shape == (len(z),) and set(np.unique(km.labels)) == set(range(20))
    np.testing.assert_array_equal(km.centers, z[km.center_ind])
    brute = np.argmin(((km.centroids[:, None] - z[None]) ** 2).sum(-1), axis=1)
    np.testing.assert_array_equal(km.center_ind, brute)
    # deterministic given the seed
    np.testing.assert_array_equal(kmeans(z, 20, seed=1, n_init=2).labels, km.labels)


def test_pc_traversal_percentiles(zreal):
    z = zreal["zvals_het-2_1k.pkl"]
    p = pca(z)
    t = pc_traversal(z, 0, n=10, lim=(5, 95), pca_result=p)
    np.testing.assert_allclose(t.values[[0, -1]], np.percentile(p.coords[:, 0], [5, 95]))
    np.testing.assert_allclose(p.transform(t.points)[:, 1], 0, atol=1e-9)
    np.testing.assert_array_equal(t.ind, nearest_point(z, t.points))


def test_kde_matches_scipy(zreal):
    z = zreal["zvals_het-2_1k.pkl"]
    q = z[::50]
    np.testing.assert_allclose(kde_density(z, q, "silverman"), gaussian_kde(z.T, "silverman")(q.T), rtol=1e-9)
    np.testing.assert_allclose(kde_density(z, q, 0.3, batch=7), gaussian_kde(z.T, 0.3)(q.T), rtol=1e-9)


def test_density_path_on_real_embeddings(zreal):
    for name, z in zreal.items():
        km = kmeans(z, 10, seed=0, n_init=2)
        a, b = farthest_pair(km.centers)
        path = density_path(z, km.centers[a], km.centers[b])   # latent points, snapped
        assert path.ind[0] == km.center_ind[a] and path.ind[-1] == km.center_ind[b], name
        assert len(np.unique(path.ind)) == len(path.ind)        # a simple path
        assert path.length >= np.linalg.norm(km.centers[a] - km.centers[b]) - 1e-9
        dens_path = kde_density(z, path.points, log=True).mean()
        dens_line = kde_density(z, linear_path(km.centers[a], km.centers[b], 40), log=True).mean()
        assert dens_path > dens_line, name


def test_density_path_avoids_gap():
    # a C-shaped band of particles: the density path must follow the C, not jump across the opening
    rng = np.random.default_rng(2)
    ang = rng.uniform(np.deg2rad(40), np.deg2rad(320), 1500)
    z = np.c_[np.cos(ang), np.sin(ang)] * rng.uniform(0.9, 1.1, (1500, 1))
    start, end = [np.cos(np.deg2rad(45)), np.sin(np.deg2rad(45))], [np.cos(np.deg2rad(315)), np.sin(np.deg2rad(315))]
    path = density_path(z, start, end, k=10)
    assert path.points[:, 0].min() < -0.85                     # went round through x = -1
    assert np.linalg.norm(path.points, axis=1).min() > 0.8     # never crossed the hole
    # a user-given density that is uniform reduces to the geometric shortest path on the graph
    flat = density_path(z, start, end, k=10, density=np.ones(len(z)))
    assert flat.points[:, 0].min() < -0.85 and flat.length <= path.length + 1e-9
    with pytest.raises(InputError, match="density must be"):
        density_path(z, 0, 1, density=np.ones(3))


def test_resample_and_grid():
    P = np.array([[0, 0], [1, 0], [1, 3]], float)
    r = resample_path(P, 5)
    np.testing.assert_allclose(r, [[0, 0], [1, 0], [1, 1], [1, 2], [1, 3]])
    xs, ys, d = density_grid(np.random.default_rng(0).normal(size=(500, 2)), bins=16)
    assert d.shape == (16, 16) and xs.shape == ys.shape == (16,)


def test_umap_tiny_inputs_fall_back_to_pca():
    z = np.random.default_rng(0).normal(size=(3, 5))
    with pytest.warns(UserWarning, match="PCA"):
        e = umap_embedding(z)
    np.testing.assert_allclose(np.abs(e), np.abs(pca(z).coords[:, :2]))


def test_analyze_save(tmp_path, zreal):
    res = analyze_latents(zreal["zvals_het-8_4k.pkl"], k=5, n_init=1, umap=False, traversal_points=4)
    out = res.save(tmp_path)
    np.testing.assert_array_equal(read_pkl(out / "kmeans5" / "labels.pkl"), res.kmeans.labels)
    assert np.loadtxt(out / "pc2" / "z_values.txt").shape == (4, 8)
    emb, labels = res.embedding()
    assert labels == ("PC1", "PC2") and emb.shape == (4549, 2)


def test_cli_analyze(tmp_path):
    from cryonb.cli import main
    z = np.random.default_rng(0).normal(size=(200, 3))
    np.save(tmp_path / "z.npy", z)
    np.savetxt(tmp_path / "lab.txt", np.arange(200) % 4)
    rc = main(["analyze", str(tmp_path / "z.npy"), "-o", str(tmp_path / "out"), "--ksample", "4", "--no-umap",
                      "--color", str(tmp_path / "lab.txt"), "--path", "3", "150"])
    assert rc == 0
    out = tmp_path / "out"
    assert (out / "report.html").stat().st_size > 4e6
    ind = np.loadtxt(out / "path" / "ind.txt", dtype=int)
    assert ind[0] == 3 and ind[-1] == 150
    assert np.loadtxt(out / "kmeans4" / "centers.txt").shape == (4, 3)
    assert main(["analyze", str(tmp_path / "missing.npy")]) == 2
