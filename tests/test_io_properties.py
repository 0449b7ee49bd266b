"""Property tests over the readers: random bytes and mutated real fixtures must either parse or raise
`InputError`/`OSError` — never another exception, never hang. The budget is small by default (CI: derandomized);
`CRYONB_HYPOTHESIS_EXAMPLES=2000 pytest tests/test_io_properties.py` searches harder. Every failure found is kept
in `tests/data/regressions/` and replayed by `test_regressions_replay`."""
import os, signal, subprocess, sys, tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from cryonb import io as cio
from cryonb.core import InputError
from cryonb.synthetic import test_data_path as T

EXAMPLES = int(os.environ.get("CRYONB_HYPOTHESIS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=bool(os.environ.get("CI")),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], database=None)
SECONDS = 20                                          # one read may not take longer than this (a hang is a failure)
REG = T("ind5.pkl").parent / "regressions"


@contextmanager
def _deadline(seconds=SECONDS):
    def boom(*_):
        raise TimeoutError(f"reader still running after {seconds} s")
    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _read(suffix: str, data: bytes):
    "Write `data` to a file with `suffix` and run every reader of that format on it."
    with tempfile.TemporaryDirectory() as td:
        p = Path(td) / f"x{suffix}"
        p.write_bytes(data)
        for reader in READERS[suffix]:
            try:
                with _deadline():
                    reader(p)
            except TimeoutError:
                raise
            except (InputError, OSError):
                pass


def _load(p):
    return cio.load_particles(p, require_images=False)


def _cs(p):
    return cio.cs_fields(cio.read_cs(p), str(p))


READERS = {".star": [cio.read_star, _load], ".cs": [cio.read_cs, _cs, _load], ".pkl": [cio.read_pkl],
           ".mrcs": [cio.read_mrc_header, cio.read_stack, _load], ".mrc": [cio.read_map],
           ".txt": [_load]}
FIXTURES = {".star": ["relion31.star", "relion31.v2.star", "relion5.star"],
            ".cs": ["empiar_10076_7.cs", "cryosparc_J2_particles_exported.cs"],
            ".pkl": ["hand_rot_trans.pkl", "ctf1.pkl", "ind5.pkl", "pose.cs.pkl"],
            ".mrcs": ["hand.mrcs", "relion31.mrcs"], ".mrc": ["toymodel_small_nocenter.mrc"]}


def _mutate(data: bytes, edits) -> bytes:
    "Apply (position fraction, kind, payload) edits: overwrite, insert, delete or truncate."
    b = bytearray(data)
    for frac, kind, payload in edits:
        i = int(frac * len(b)) if b else 0
        if kind == "overwrite":
            b[i:i + len(payload)] = payload
        elif kind == "insert":
            b[i:i] = payload
        elif kind == "delete":
            del b[i:i + max(1, len(payload))]
        else:
            del b[i:]
    return bytes(b)


EDITS = st.lists(st.tuples(st.floats(0, 1), st.sampled_from(["overwrite", "insert", "delete", "truncate"]),
                           st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)


@SETTINGS
@given(suffix=st.sampled_from(sorted(READERS)), data=st.binary(max_size=2048))
def test_random_bytes(suffix, data):
    _read(suffix, data)


@SETTINGS
@given(suffix=st.sampled_from(sorted(FIXTURES)), which=st.integers(0, 3), edits=EDITS)
def test_mutated_fixtures(suffix, which, edits):
    names = FIXTURES[suffix]
    data = T(names[which % len(names)]).read_bytes()
    if suffix in (".mrcs", ".mrc"):              # keep the mutations mostly in the header and the first images
        data = data[:1024 + 64 * 64 * 4 * 2] if suffix == ".mrcs" else data
        edits = [(f * 0.05 if k != "truncate" else f, k, p) for f, k, p in edits]
    _read(suffix, _mutate(data, edits))


TOKENS = st.sampled_from(["nan", "inf", "-inf", "x", "", "1e400", "-1", "0", "@", "000009@relion31.mrcs", "loop_",
                          "data_optics", "_rlnImageName", "\x00", "é", "1 2 3"])


@SETTINGS
@given(token=TOKENS, line=st.integers(0, 200), col=st.integers(0, 30))
def test_star_token_replaced(token, line, col):
    "Replace one whitespace-separated token of a real STAR file by a hostile one."
    lines = T("relion31.star").read_text().splitlines()
    i = line % len(lines)
    words = lines[i].split()
    if words:
        words[col % len(words)] = token
        lines[i] = " ".join(words)
    _read(".star", ("\n".join(lines) + "\n").encode("utf-8"))


@pytest.mark.parametrize("path", sorted(p for p in REG.iterdir() if p.suffix in READERS), ids=lambda p: p.name)
def test_regressions_replay(path):
    """Every kept failure still parses or raises InputError/OSError. `.pkl` files run in a subprocess: one of them
    segfaulted the interpreter, and a regression must fail this test, not kill the test run."""
    if path.suffix != ".pkl":
        _read(path.suffix, path.read_bytes())
        return
    code = ("import sys, cryonb.io as io\nfrom cryonb.core import InputError\n"
            "try: io.read_pkl(sys.argv[1])\n"
            "except (InputError, OSError) as e: print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-1000:])
