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


def _done(ckpt: Path, field: str = "done") -> int:
    """Progress recorded by a checkpoint (0 when there is none yet): images summed (`done`) or stack files
    complete (`files`); it is renamed into place whole, so it reads whole."""
    try:
        return int(torch.load(ckpt, map_location="cpu", weights_only=True)[field])
    except (FileNotFoundError, EOFError, RuntimeError):
        return 0


def _kill_at(argv: list, ckpt: Path, target: int, field: str = "done", timeout: float = 120.0) -> int:
    "Start the job, SIGKILL it as soon as its checkpoint holds >= `target` images; returns the images then held."
    p = subprocess.Popen(CLI + argv, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    try:
        while _done(ckpt, field) < target:
            assert p.poll() is None, f"the job ended before it could be killed: {p.stderr.read().decode()[-2000:]}"
            assert time.monotonic() - t0 < timeout, "no checkpoint progress"
            time.sleep(0.005)
        p.send_signal(signal.SIGKILL)
    finally:
        p.wait()
    assert p.returncode == -signal.SIGKILL
    return _done(ckpt, field)


def _same_file(a: Path, b: Path) -> bool:
    """Byte-equal files, except the time stamps the writers add: the label of an .mrc header (mrcfile), the
    `# Created by the starfile ...` line of a .star."""
    if a.suffix == ".star":
        lines = lambda p: [ln for ln in p.read_text().splitlines() if not ln.startswith("# Created by")]
        return lines(a) == lines(b)
    if a.suffix != ".mrc": return a.read_bytes() == b.read_bytes()
    import mrcfile
    with mrcfile.open(a) as x, mrcfile.open(b) as y:
        return np.array_equal(x.data, y.data) and all(np.array_equal(x.header[n], y.header[n])
                                                      for n in x.header.dtype.names if n != "label")


def _same_tree(ref: Path, out: Path, skip=("params.json",)) -> None:
    "Both folders hold the same files (no temporary leftovers) with the same contents."
    names = lambda d: sorted(p.relative_to(d).as_posix() for p in d.rglob("*") if p.is_file() and p.name not in skip)
    assert names(ref) == names(out), (names(ref), names(out))
    for f in names(ref): assert _same_file(ref / f, out / f), f


def _killed_three_times(argv_ref: list, argv_out: list, ckpt: Path, n_files: int, seed: int) -> list:
    "Reference run, then the same job killed at 3 random stack-file counts and finished by a 4th run."
    _run(argv_ref)
    targets = sorted(random.Random(seed).sample(range(1, n_files - 2), 3))
    held = [_kill_at(argv_out, ckpt, t, "files") for t in targets]
    assert all(t <= h < n_files for t, h in zip(targets, held)) and held == sorted(held), (targets, held)
    _run(argv_out)
    assert not ckpt.exists()
    return held


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


def test_simulate_resumes_after_sigkill(tmp_path):
    "200 noisy images of the 30-px toy map in 20 files of 10: killed 3 times, the stacks, star, pkl and npy match."
    args = ["simulate", str(T("toymodel_small_nocenter.mrc")), "-n", "200", "--snr", "0.1", "--max-shift", "2",
            "--seed", "5", "--chunk-size", "8", "--images-per-file", "10", "--device", "cpu", "-o"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _killed_three_times(args + [str(ref)], args + [str(out)], out / "simulate.ckpt.pt", 20, seed=7)
    _same_tree(ref, out)


def test_dataset_resumes_after_sigkill(tmp_path):
    "The AdK two-state dataset (2 states x 60 images, 32 px, 12 files): killed 3 times, every file matches."
    args = ["dataset", "adk", "--two-state", "--images-per-state", "60", "-D", "32", "--apix", "3.0",
            "--images-per-file", "10", "--seed", "3", "--device", "cpu", "-o"]
    ref, out = tmp_path / "ref", tmp_path / "killed"
    _killed_three_times(args + [str(ref)], args + [str(out)], out / "simulate.ckpt.pt", 12, seed=11)
    _same_tree(ref, out)


def test_rerun_removes_a_killed_writes_temporary(tmp_path):
    "A SIGKILL inside `atomic_write` leaves `.<name>.<random>.tmp<ext>` behind; the next run of the job removes it."
    out = tmp_path / "ds"
    out.mkdir()
    planted = out / ".particles.txt.a4zfye8a.tmp.txt"                 # the leftover seen on CI
    planted.write_text("partial")
    _run(["dataset", "adk", "--two-state", "--images-per-state", "4", "-D", "16", "--apix", "6.0", "--seed", "1", "--images-per-file", "4",
          "--device", "cpu", "-o", str(out)])
    assert not planted.exists() and (out / "particles.txt").is_file()
    assert not [p.name for p in out.rglob(".*.tmp*")]
