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
