"""Kill/resume: a job killed with SIGKILL at random points and rerun with the same command ends with the same
outputs as an uninterrupted run (bit for bit: the resumed job adds the same images in the same batches to the
sums restored from its checkpoint, on the CPU with one thread)."""
import os, random, signal, subprocess, sys, time
from pathlib import Path

import numpy as np
import pytest
import torch

from cryonb.io import read_map
from cryonb.synthetic import test_data_path as T

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CLI = [sys.executable, "-c", "import sys; from cryonb.cli import main; sys.exit(main())"]


def _done(ckpt: Path) -> int:
    "Images held by a checkpoint (0 when there is none yet); it is renamed into place whole, so it reads whole."
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)["done"])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _kill_at(argv: list, ckpt: Path, target: int, timeout: float = 120.0) -> int:
    "Start the job, SIGKILL it as soon as its checkpoint holds >= `target` images; returns the images then held."
    p = subprocess.Popen(CLI + argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while _done(ckpt) < target:
            assert p.poll() is None, f"the job ended before it could be killed: {p.stderr.read().decode()[-2000:]}"
            assert time.monotonic() - t0 < timeout, "no checkpoint progress"
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    return _done(ckpt)


def _run(argv: list) -> None:
    r = subprocess.run(CLI + argv, env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-3000:]


def test_backproject_resumes_after_sigkill(tmp_path):
    n, bs = 1000, 10
    args = ["backproject", str(T("toy_projections.mrcs")), "--poses", str(T("toy_angles.pkl")), "--ctf", str(T("test_ctf.pkl")),
            "--device", "cpu", "--no-plot", "-b", str(bs), "--checkpoint-every", str(bs)]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _run(args + ["-o", str(ref)])
    assert not (ref / "backproject.ckpt.pt").exists()
    ckpt = out / "backproject.ckpt.pt"
    targets = sorted(random.Random(20261204).sample(range(bs, n - 20 * bs, bs), 3))
    held = [_kill_at(args + ["-o", str(out)], ckpt, t) for t in targets]
    # each kill left a checkpoint at or beyond its target and short of the end: the job stopped mid-way 3 times
    assert all(t <= h < n for t, h in zip(targets, held)) and held == sorted(held), (targets, held)
    assert not (out / "backproject.mrc").exists()
    _run(args + ["-o", str(out)])
    assert not ckpt.exists()
    for f in ("backproject.mrc", "half_map_a.mrc", "half_map_b.mrc"):
        a, apix_a = read_map(ref / f)
        b, apix_b = read_map(out / f)
        assert apix_a == apix_b and np.array_equal(a, b), f
    assert (ref / "fsc-vals.txt").read_text() == (out / "fsc-vals.txt").read_text()
    left = sorted(p.name for p in out.iterdir())
    assert left == ["backproject.mrc", "fsc-vals.txt", "half_map_a.mrc", "half_map_b.mrc"], left
