"""Tests of cryonb.report: self-contained HTML reports and the shared plotly figure helpers."""
import re
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import torch

from cryonb.report import Report, fsc_figure, fsc_crossing, latent_scatter, line_figure, map_slices_figure


def _two_noisy_maps(D=24, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.linspace(-1, 1, D)
    zz, yy, xx = torch.meshgrid(x, x, x, indexing="ij")
    vol = torch.exp(-((xx - .2) ** 2 + yy ** 2 + (zz + .1) ** 2) / 0.05)
    return vol + noise * torch.randn(vol.shape, generator=g), vol + noise * torch.randn(vol.shape, generator=g)


def test_fsc_figure_matches_package_resolution():
    from cryonb.fourier import fsc, fsc_resolution
    a, b = _two_noisy_maps()
    freqs, curve = fsc(a, b)
    fig = fsc_figure({"half-maps": (freqs, curve)}, apix=1.7)
    r = fsc_resolution(freqs, curve, 0.143, 1.7)
    assert f"0.143: {r:.2f} Å" in fig.data[0].name or f"0.143: ≤{r:.2f} Å" in fig.data[0].name
    np.testing.assert_allclose(np.asarray(fig.data[0].x), freqs.numpy() / 1.7, rtol=1e-6)
    # identical maps never cross: Nyquist bound flagged
    freqs, curve = fsc(a, a)
    res, crossed = fsc_crossing(freqs, curve, 0.143, 1.7)
    assert not crossed and res == pytest.approx(3.4)


def test_report_self_contained(tmp_path):
    rng = np.random.default_rng(1)
    z = rng.normal(size=(500, 2))
    rep = Report("integration")
    rep.add_params({"apix": 1.2, "device": "cpu", "list": list(range(40))})
    rep.add_figure(latent_scatter(z, z[:, 0]), "latent")
    rep.add_figure(line_figure(np.arange(1, 6), {"λ": 2.0 ** -np.arange(5)}, log_y=True), "spectrum")
    rep.add_figure(map_slices_figure(rng.normal(size=(8, 8, 8)), apix=2.0), "slices")
    rep.add_table([{"method": "a", "auc": 0.25}, {"method": "b", "auc": 0.5}], "records")
    out = rep.write(tmp_path / "out")
    assert out == tmp_path / "out" / "report.html"
    s = out.read_text(encoding="utf-8")
    assert s.count("* plotly.js v") == 1
    assert not re.search(r"<script[^>]+src=", s)
    assert all(f'id="fig{i}"' in s for i in (1, 2, 3))
    assert "[40 items]" in s and "<td>0.25</td>" in s
    assert 4e6 < len(s) < 6e6  # plotly.js once (~4.8 MB) + small figures


def test_report_png_optional(tmp_path):
    rep = Report("png").add_figure(go.Figure(go.Scatter(x=[0, 1], y=[0, 1])))
    try:
        import kaleido  # noqa: F401
    except ImportError:
        with pytest.warns(UserWarning, match="kaleido"):
            assert rep.write_png(tmp_path) == []
    else:
        rep.write_png(tmp_path)  # may warn without a browser; must not raise


def test_map_slices_from_real_file():
    from cryonb import io
    from cryonb.synthetic import test_data_path
    p = test_data_path("toymodel_small_nocenter.mrc")
    vol, apix = io.read_map(p)
    fig = map_slices_figure(p)
    D = np.asarray(vol).shape[0]
    assert np.asarray(fig.data[0].z).shape == (D, D)
    np.testing.assert_allclose(np.asarray(fig.data[0].z), np.asarray(vol)[D // 2], rtol=1e-6)
    assert fig.data[0].x[1] - fig.data[0].x[0] == pytest.approx(apix)


def test_report_renders_offline_in_headless_browser(tmp_path):
    """The written file draws every figure in a real browser with no network (plotly.js inlined)."""
    import shutil, subprocess
    browser = next((b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
    if browser is None:
        pytest.skip("no headless Chromium on this machine")
    k = np.arange(16) / 32.0
    rep = (Report("browser").add_figure(fsc_figure({"a": (k, 1 - 2 * k)}, apix=1.0))
           .add_figure(line_figure(None, [1.0, 0.5, 0.25])))
    p = rep.write(tmp_path / "r.html")
    try:
        dom = subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                              "--dump-dom", p.as_uri()], capture_output=True, text=True, timeout=120).stdout
    except subprocess.TimeoutExpired:
        pytest.skip("headless browser did not finish")
    assert dom.count('class="plot-container plotly"') == 2
    assert "0.143: " in dom   # the legend with the resolution was drawn
