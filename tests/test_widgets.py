"""Headless tests of cryonb.widgets: widget state (slider values, figure data) after simulated interaction."""
import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import pytest
import torch
import ipywidgets as widgets

import cryonb.widgets as W
from cryonb.core import InputError
from cryonb.io import read_map
from cryonb.synthetic import test_data_path as data_path


def test_renderer_and_mimebundle():
    assert pio.renderers.default == "plotly_mimetype"
    fp = W.FSCPlot({"a": (np.arange(8) / 16, np.linspace(1, 0, 8))}, apix=1.0)
    assert "application/vnd.jupyter.widget-view+json" in fp._repr_mimebundle_()


@pytest.mark.parametrize("live", [True, False])
def test_map_viewer_real_map(live):
    p = data_path("toymodel_small_nocenter.mrc")
    vol, apix = read_map(p)
    mv = W.MapViewer(p, use_figurewidget=live)
    assert mv.slice_fig.live is live and isinstance(mv.slice_fig.fig, go.FigureWidget if live else go.Figure)
    for axis, take in (("z", lambda i: vol[i]), ("y", lambda i: vol[:, i, :]), ("x", lambda i: vol[:, :, i])):
        mv.axis_buttons.value = axis
        for i in (0, 11, 29):
            mv.slice_slider.value = i
            np.testing.assert_array_equal(np.asarray(mv.slice_fig.fig.data[0].z), take(i))
    x = np.asarray(mv.slice_fig.fig.data[0].x)
    assert x[1] - x[0] == pytest.approx(apix or 1.0) and x[15] == 0.0      # Å, box centre at 0
    mv.threshold_slider.value = float(vol.mean())
    assert mv.iso_fig.fig.data[0].isomin == pytest.approx(float(vol.mean()))
    if not live:  # the Output widget holds the re-rendered figure (plotly JSON, no plotly.js)
        assert mv.iso_fig.static_json()["data"][0]["isomin"] == pytest.approx(float(vol.mean()))
        assert len(mv.slice_fig.widget.outputs) == 1


def test_map_viewer_clamps_on_new_volume():
    mv = W.MapViewer(np.random.default_rng(0).normal(size=(12, 12, 12)), index=10)
    mv.set_volume(np.full((6, 6, 6), 5.0) + np.arange(6)[:, None, None])
    assert mv.slice_slider.max == 5 and mv.slice_slider.value == 5
    assert mv.threshold_slider.min == 5.0 and mv.threshold_slider.max == 10.0
    assert 5.0 <= mv.threshold_slider.value <= 10.0
    np.testing.assert_array_equal(np.asarray(mv.slice_fig.fig.data[0].z), np.full((6, 6), 10.0))


def test_particle_gallery_dataset_and_array():
    from cryonb.data import ParticleDataset
    ds = ParticleDataset(data_path("hand.mrcs"), poses=data_path("hand_rot.pkl"))
    gal = W.ParticleGallery(ds, n_rows=3, n_cols=3)
    assert gal.page_slider.max == 11                   # 100 images, 9 per page
    gal.page_slider.value = 11
    np.testing.assert_array_equal(gal.indices, [99])
    np.testing.assert_allclose(np.asarray(gal.fig.fig.data[0].z), ds[[99]]["images"][0].numpy())
    assert gal.fig.fig.layout.annotations[1].text == ""
    df = gal.page_info([0, 1])
    assert "tilt (°)" in df and "defocus_u (Å)" not in df   # no CTF given for this stack
    with pytest.raises(InputError, match="info"):
        W.ParticleGallery(np.zeros((3, 4, 4)), info={"x": np.zeros(2)})


def test_latent_explorer_selection_decodes():
    from cryonb.analysis import as_latents
    z = as_latents(data_path("zvals_het-2_1k.pkl"))
    calls = []
    def decode(zz):
        calls.append(zz.copy())
        return np.full((8, 8, 8), zz[0], np.float32)
    le = W.LatentExplorer(z, embedding="z", color=z[:, 0], decode=decode, apix=3.0)
    np.testing.assert_allclose(np.asarray(le.fig.fig.data[0].x), z[np.asarray(le.fig.fig.data[0].customdata), 0])
    # a lasso selection as the front end reports it
    pts = [3, 4, 100]
    le.fig.fig._js2py_pointsCallback = {"event_type": "plotly_selected", "selector": {"type": "lasso",
        "selector_state": {"xs": [0, 1, 1], "ys": [0, 0, 1]}},
        "points": {"trace_indexes": [0] * 3, "point_indexes": pts, "xs": [0] * 3, "ys": [0] * 3}}
    idx = np.asarray(le.fig.fig.data[0].customdata)[pts]
    assert len(calls) == 1 and set(le.selected) == set(idx)
    assert le.decoded_index in idx
    np.testing.assert_allclose(calls[0], z[le.decoded_index])
    assert isinstance(le.viewer, W.MapViewer) and le.viewer.apix == 3.0
    assert le.viewer.volume[0, 0, 0] == pytest.approx(z[le.decoded_index, 0], rel=1e-6)
    with pytest.raises(InputError, match="indices"):
        le.select([len(z)])


def test_latent_explorer_static_fallback_and_structure():
    z = np.random.default_rng(1).normal(size=(50, 4))
    le = W.LatentExplorer(z, decode=lambda zz: np.c_[np.arange(12) * 3.8, np.zeros((12, 2))] + zz[:3],
                          use_figurewidget=False)
    assert not le.fig.live
    assert le.select([7]) == 7
    assert isinstance(le.viewer, W.StructureViewer)
    np.testing.assert_allclose(np.asarray(le.viewer.fig.fig.data[0].y, float)[0], z[7, 1])


def test_structure_viewer_from_cg_model():
    from cryonb.structure import from_pdb
    cg = from_pdb(data_path("adk_closed_1ake.pdb"))
    sv = W.StructureViewer(cg)
    assert sv.coords.shape[1] == cg.n_res
    np.testing.assert_allclose(np.asarray(sv.fig.fig.data[0].x, float)[:5], cg.coords[0, :5, 0].numpy(), rtol=1e-6)


def test_fsc_plot_resolutions():
    from cryonb.fourier import fsc_resolution
    f = torch.arange(32) / 64.0
    c1, c2 = torch.clamp(1 - 3 * f, -1, 1), torch.clamp(1 - 2 * f, -1, 1)
    fp = W.FSCPlot({"a": (f, c1)}, apix=2.0)
    fp.add("b", f, c2)
    r = fp.resolutions().set_index("curve")
    for name, c in (("a", c1), ("b", c2)):
        for t in (0.143, 0.5):
            assert r.loc[name, f"FSC={t:g}"] == pytest.approx(fsc_resolution(f, c, t, 2.0))
    assert r.loc["a", "FSC=0.5"] > r.loc["b", "FSC=0.5"]     # faster decay = worse resolution
    names = [d.name for d in fp.fig.fig.data]
    assert any("0.5: " in n and n.startswith("b") for n in names)


def test_trajectory_player_maps_and_paths(tmp_path):
    from cryonb.io import write_map
    D = 12
    frames = np.zeros((3, D, D, D), np.float32)
    for i in range(3):
        frames[i, D // 2, D // 2, 2 + 4 * i] = 1.0
    paths = []
    for i in range(3):
        write_map(tmp_path / f"f{i}.mrc", frames[i], 2.0); paths.append(tmp_path / f"f{i}.mrc")
    tp = W.TrajectoryPlayer(paths, isosurface=False)
    assert tp.kind == "map" and tp.viewer.apix == 2.0
    for i in range(3):
        tp.slider.value = i
        img = np.asarray(tp.viewer.slice_fig.fig.data[0].z)
        assert img.max(0).argmax() == 2 + 4 * i
    assert tp.play.value == 2                                  # linked both ways
    with pytest.raises(InputError, match="kind"):
        W.TrajectoryPlayer(frames, kind="movie")


def test_particle_gallery_real_ctf():
    """Real EMPIAR-10076 particles: the table shows the STAR's defocus (read independently with starfile) and
    the CTF panel is cryonb.ctf.ctf_2d of each particle's parameters."""
    import starfile
    from cryonb.data import ParticleDataset
    from cryonb.ctf import ctf_2d
    star = data_path("empiar_10076_7.star")
    ds = ParticleDataset(star)
    gal = W.ParticleGallery(ds, n_rows=1, n_cols=4)
    df = gal.page_info(gal.indices)
    ref = starfile.read(star)
    np.testing.assert_allclose(df["defocus_u (Å)"], ref["rlnDefocusU"].to_numpy()[:4], rtol=1e-6)
    assert gal.fig.fig.layout.annotations[0].text.endswith(f"{(ref['rlnDefocusU'][0] + ref['rlnDefocusV'][0]) / 2e4:.2f} µm")
    gal.show_buttons.value = "CTF"
    np.testing.assert_allclose(np.asarray(gal.fig.fig.data[1].z), ctf_2d(ds[[1]]["ctf"], ds.D, ds.apix)[0].numpy(), atol=1e-6)
    gal.page_slider.value = 1                               # paging keeps the mode
    np.testing.assert_allclose(np.asarray(gal.fig.fig.data[2].z), ctf_2d(ds[[6]]["ctf"], ds.D, ds.apix)[0].numpy(), atol=1e-6)
    assert gal.fig.fig.layout.annotations[3].text == ""


def test_structure_viewer_file_uses_the_ca_rule(tmp_path):
    """A file is read through `cryonb.structure`: a calcium ion named CA (element Ca) is not a Cα, and the
    trace from the file equals the coarse-grained model's coordinates."""
    from cryonb.structure import from_pdb, atoms_to_structure
    xyz = np.array([[0, 0, 0], [3.8, 0, 0], [7.6, 0, 0], [20.0, 20, 20]])
    st = atoms_to_structure(xyz, ["CA", "CA", "CA", "CA"], ["GLY", "ALA", "GLY", "CA"], [1, 2, 3, 4], ["C", "C", "C", "Ca"])
    st.write_pdb(str(tmp_path / "ion.pdb"))
    sv = W.StructureViewer(tmp_path / "ion.pdb", use_figurewidget=False)
    assert sv.coords.shape == (1, 3, 3)
    np.testing.assert_allclose(sv.coords[0], xyz[:3], atol=1e-3)
    sv2 = W.StructureViewer(data_path("adk_closed_1ake.pdb"), use_figurewidget=False)
    np.testing.assert_allclose(sv2.coords[0], from_pdb(data_path("adk_closed_1ake.pdb")).coords[0].numpy(), atol=1e-6)
