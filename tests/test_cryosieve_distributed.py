"""CryoSieve under torch.distributed: two CPU processes (gloo), started by `--num_gpus 2` (which relaunches
the command under `python -m torch.distributed.run`), give the same kept set as one process."""
import os
import subprocess
import sys

import starfile

from cryonb.methods import cryosieve as cs
from cryonb import synthetic


def test_two_processes_same_kept_set(tmp_path):
    d = synthetic.blob_dataset(tmp_path, n=150, D=32, apix=2.0, junk_fraction=0.2, noise_sigma=3.0, seed=31)
    one = cs.sieve_core(d["star"], tmp_path / "one.star", [d["map"]] * 2, 20.0, mask=d["mask"], device="cpu", verbose=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-c", "import sys; from cryonb.cli import main; sys.exit(main(sys.argv[1:]))", "sieve-core",
           "--i", str(d["star"]), "--o", str(tmp_path / "two.star"), "--volume", str(d["map"]), "--volume", str(d["map"]),
           "--mask", str(d["mask"]), "--frequency", "20", "--device", "cpu", "--num_gpus", "2", "--batch_size", "16"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "terminate called" not in r.stderr and "Traceback" not in r.stderr, r.stderr   # both ranks leave cleanly
    assert "(2 processes)" in r.stderr and r.stderr.count(" kept at ") == 1   # progress is logged by rank 0 only
    for name in ("two.star", "two_sieved.star"):
        assert (tmp_path / name).is_file()
    two = starfile.read(tmp_path / "two.star", always_dict=True)
    ref = starfile.read(tmp_path / "one.star", always_dict=True)
    assert two["particles"].equals(ref["particles"]) and two["optics"].equals(ref["optics"])
    assert len(two["particles"]) == int(one["keep"].sum()) == 120
    assert starfile.read(tmp_path / "two_sieved.star")["particles"].equals(starfile.read(tmp_path / "one_sieved.star")["particles"])
