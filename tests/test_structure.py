"""Atomic models: the one reader (`structure.read_atoms`) and writer (`structure.write_pdb`), on the real AdK
files (PDB 1AKE; provenance in tests/data/README.md), and the `center-origin` verb."""
import numpy as np
import pytest
import gemmi
from cryonb import structure as S
from cryonb.synthetic import test_data_path as T


def test_pdb_and_multimodel_round_trip(tmp_path):
    s = S.read_atoms(T("adk_closed_1ake.pdb"))
    assert s.coords.shape == (1, 1656, 3) and set(s.chains) == {"A"}
    ens = s.coords[0] + np.arange(3)[:, None, None] * np.array([1.0, -2.0, 0.5], dtype=np.float32)
    S.write_pdb(tmp_path / "e.pdb", ens, s)
    s2 = S.read_atoms(tmp_path / "e.pdb")
    np.testing.assert_allclose(s2.coords, ens, atol=1e-3)
    assert list(s2.resids) == list(s.resids) and list(s2.elements) == list(s.elements)
    st = gemmi.read_structure(str(tmp_path / "e.pdb"))
    assert len(st) == 3 and st[2].count_atom_sites() == 1656


def test_bad_models_are_input_errors(tmp_path):
    from cryonb.core import InputError
    (tmp_path / "junk.pdb").write_text("this is not a PDB file\n")
    with pytest.raises(InputError, match="junk.pdb"):
        S.from_pdb(tmp_path / "junk.pdb")
    with pytest.raises(FileNotFoundError, match="nope.pdb"):
        S.read_atoms(tmp_path / "nope.pdb")


def _two_chain_model(n_models=2):
    import torch
    rng = np.random.default_rng(3)
    n = 7
    return S.CGModel(torch.as_tensor(rng.normal(scale=8.0, size=(n_models, n, 3)), dtype=torch.float32),
                     torch.full((n,), 33.0), np.full(n, "ALA"), np.array([1, 2, 3, 7, 8, 1, 2]),
                     np.array(list("AAAAABB")), np.full(n, "CA"))


def test_cgmodel_chain_fields_and_ter_records(tmp_path):
    m = _two_chain_model()
    assert m.chain_index.tolist() == [0, 0, 0, 0, 0, 1, 1]
    # residue 3→7 is a numbering gap, 8(A)→1(B) a chain change: not bonded
    assert m.breaks.tolist() == [False, False, True, False, True, False]
    p = m.to_pdb(tmp_path / "cg.pdb")
    text = p.read_text()
    assert "CRYST1" not in text                      # no fake 1 Å unit cell
    assert text.count("TER") == 2 * 2 and text.count("MODEL") == 2   # one TER per chain per model
    back = S.from_pdb(p)
    np.testing.assert_allclose(back.coords.numpy(), m.coords.numpy(), atol=1e-3)
    assert back.breaks.tolist() == m.breaks.tolist() and list(back.chains) == list(m.chains)
    assert list(back.resids) == list(m.resids)


def test_nan_coordinates_name_file_and_atoms(tmp_path):
    from cryonb.core import InputError
    s = S.read_atoms(T("adk_closed_1ake.pdb"))
    lines = T("adk_closed_1ake.pdb").read_text().splitlines()
    k = next(i for i, l in enumerate(lines) if l.startswith("ATOM") and l[12:16].strip() == "CA")
    lines[k] = lines[k][:30] + f"{'nan':>8}" + lines[k][38:]
    (tmp_path / "bad.pdb").write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=r"bad\.pdb.*NaN/Inf.*CA"):
        S.read_atoms(tmp_path / "bad.pdb")
    assert s.coords.shape == (1, 1656, 3)


def test_center_origin_cli_box_and_errors(tmp_path, capsys):
    from cryonb.cli import main
    src = T("adk_closed_1ake.pdb")
    assert main(["center-origin", "--pdb", str(src), "-D", "64", "--apix", "1.5", "-o", str(tmp_path)]) == 0
    moved = S.read_atoms(tmp_path / "adk_closed_1ake_centered.pdb")
    ref = S.read_atoms(src)
    np.testing.assert_allclose(moved.coords, ref.coords - 32 * 1.5, atol=1e-3)
    assert not list(tmp_path.glob(".*tmp*"))           # atomic write left no temporary file
    capsys.readouterr()
    assert main(["center-origin", "--pdb", str(src), "-o", str(tmp_path)]) == 2
    assert "cryonb center-origin: error:" in capsys.readouterr().err
    assert main(["center-origin", "--pdb", str(src), "-D", "0", "--apix", "1"]) == 2
    assert ">= 1" in capsys.readouterr().err
    assert main(["center-origin", "--pdb", str(tmp_path / "nope.pdb"), "-D", "64", "--apix", "1.5"]) == 2
    assert "nope.pdb" in capsys.readouterr().err
