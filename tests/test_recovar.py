"""RECOVAR (cryonb.methods.recovar): recovery of a known low-rank covariance on synthetic data
projected analytically (independent of cryonb.projection), algebraic checks of the CG solver and the
embedding, and input validation."""
import numpy as np
import pytest
import torch

from cryonb.core import InputError
from cryonb.methods import recovar as rc
from cryonb import synthetic


@pytest.fixture(scope="module")
def run3():
    torch.manual_seed(0)
    syn = synthetic.synthetic_dataset(D=20, n=1000, n_states=3, snr=1.0, ctf=True, seed=11)
    res = rc.recovar_pipeline(rc.source_from_synthetic(syn), zdims=(2, 4), n_columns=60, n_pcs=8, block_size=30, log=None)
    return syn, res


def test_principal_subspace_matches_truth(run3):
    syn, res = run3
    truth = syn["volumes"][1:] - syn["volumes"][0]          # the covariance of 3 states has rank 2, range = state differences
    ang = rc.principal_angles(res.u[:2], truth)
    print("principal angles (deg) between recovered top-2 PCs and the true subspace:", ang)
    assert ang[0] < 20 and ang[1] < 40, ang
    # a random 2-D subspace is nearly orthogonal to the truth: the metric discriminates
    rnd = torch.randn(2, 20, 20, 20, generator=torch.Generator().manual_seed(0))
    assert rc.principal_angles(rnd, truth).min() > 70
    # eigenvalues: two dominant ones
    s = res.s.cpu().numpy()
    assert s[1] > 1.5 * s[2], s


def test_embeddings_separate_states(run3):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score
    syn, res = run3
    z = res.embeddings[2]["z"].numpy()
    ari = adjusted_rand_score(syn["labels"], KMeans(3, n_init=10, random_state=0).fit(z).labels_)
    print("adjusted Rand index of k-means on z (zdim 2) vs true states:", ari)
    assert ari > 0.85
    P = res.embeddings[4]["precision"].numpy()
    assert P.shape == (1000, 4, 4) and np.allclose(P, P.transpose(0, 2, 1), atol=1e-3 * np.abs(P).max())
    assert (np.linalg.eigvalsh(P.astype(np.float64)) > -1e-6 * np.abs(P).max()).all()


def test_projected_covariance_cg_equals_dense_solve():
    g = torch.Generator().manual_seed(3)
    n, N = 5, 80
    G = torch.randn(N, n, n, generator=g, dtype=torch.float64); G = G @ G.transpose(1, 2) + 0.1 * torch.eye(n, dtype=torch.float64)
    a = torch.randn(N, n, generator=g, dtype=torch.float64) * 3
    S, info = rc.projected_covariance(G, a, n_iter=500, tol=1e-12, ridge=0.0)
    K = torch.einsum("bij,bkl->ikjl", G, G).reshape(n * n, n * n)
    rhs = (a.T @ a - G.sum(0)).reshape(-1)
    Sd = torch.linalg.solve(K, rhs).reshape(n, n)
    torch.testing.assert_close(S, 0.5 * (Sd + Sd.T), rtol=1e-6, atol=1e-8 * float(Sd.abs().max()))


def test_embedding_contrast_search_recovers_contrast():
    g = torch.Generator().manual_seed(4)
    n, N = 3, 50
    G = torch.randn(N, n, n, generator=g); G = G @ G.transpose(1, 2) + 50 * torch.eye(n)
    z = torch.randn(N, n, generator=g); m = torch.randn(N, n, generator=g) * 5
    c = 0.4 + 1.2 * torch.rand(N, generator=g)
    # noiseless statistics of y = c·(Aμ + AUz): Uᵀy = c(m + Gz), a = Uᵀy − m; choose ‖Aμ‖² etc. consistent with G ≈ AᵀA on span
    Uy = c[:, None] * (m + torch.einsum("bij,bj->bi", G, z))
    # ‖Aμ‖²: the part in the span of AU (mᵀG⁻¹m) plus a part orthogonal to it, which makes the contrast identifiable
    mm = (m * torch.linalg.solve(G, m.unsqueeze(-1)).squeeze(-1)).sum(-1) + 100.0
    my = c * (mm + (m * z).sum(-1))
    yy = c ** 2 * (mm + 2 * (m * z).sum(-1) + torch.einsum("bi,bij,bj->b", z, G, z))
    st = dict(G=G, a=Uy - m, m=m, yy=yy, mm=mm, my=my)
    e = rc.embed(st, torch.eye(n), torch.full((n,), 1e6), n, correct_contrast=True, n_contrasts=200)
    assert (e["contrast"] - c).abs().max() < 0.03
    torch.testing.assert_close(e["z"], z, atol=0.1, rtol=0.05)


def test_bad_inputs():
    with pytest.raises(InputError, match="images must be"):
        rc.ArraySource(torch.zeros(4, 8, 9), torch.eye(3).expand(4, 3, 3))
    with pytest.raises(InputError, match="rotations must be"):
        rc.ArraySource(torch.zeros(4, 8, 8), torch.eye(3).expand(3, 3, 3))
    with pytest.raises(InputError, match="halfset"):
        rc.ArraySource(torch.zeros(4, 8, 8), torch.eye(3).expand(4, 3, 3), halfset=[0, 1, 2, 0])
    with pytest.raises(InputError, match="unknown mask option"):
        rc.make_masks("cube", D=8)
    with pytest.raises(InputError, match="do not match"):
        syn = synthetic.synthetic_dataset(D=8, n=10, n_states=1, ctf=False)
        rc.kernel_regression(rc.source_from_synthetic(syn), torch.zeros(5, 2), torch.zeros(5, 2, 2), torch.zeros(1, 2), torch.ones(8))
