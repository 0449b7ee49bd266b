"""`cryonb demo` survives a kill in the middle of a step: the steps finished before the kill are reused (their
record is not rewritten), the killed step is redone, and the results equal an uninterrupted run's."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np


def _demo(out):
    return [sys.executable, "-m", "cryonb.cli", "demo", "-o", str(out), "--size", "tiny", "--methods", "none"]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _results(out):
    return {f.stem: json.loads(f.read_text())["result"] for f in sorted((out / "steps").glob("*.json"))}


def test_demo_survives_kill_mid_step(tmp_path):
    ref = tmp_path / "ref"
    assert subprocess.run(_demo(ref), env=_env(), capture_output=True).returncode == 0
    out = tmp_path / "killed"
    rng = np.random.default_rng()
    step = str(rng.choice(["dataset", "bounds"]))
    # the parent and its step child share a session: one SIGKILL to the group kills both, as a crash or OOM would
    p = subprocess.Popen(_demo(out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    log = out / "logs" / f"{step}.log"
    while p.poll() is None and not log.exists():
        time.sleep(0.01)
    # inside the step: 10-60 % of its wall time in the uninterrupted run (a fixed 0.5-2.5 s outlasted a fast `bounds`
    # step on CI, so the kill landed after it had finished)
    wall = json.loads((ref / "steps" / f"{step}.json").read_text())["timing"]["wall_s"]
    time.sleep(float(rng.uniform(0.1, 0.6)) * wall)
    assert p.poll() is None, "the demo finished before it could be killed"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "steps" / f"{step}.json").exists()                      # the killed step left no record
    done_before = {f.name: f.stat().st_mtime_ns for f in (out / "steps").glob("*.json")}
    assert set(done_before) == ({"dataset.json"} if step == "bounds" else set())
    r = subprocess.run(_demo(out), env=_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for name, t in done_before.items():                                       # finished steps reused, not redone
        assert (out / "steps" / name).stat().st_mtime_ns == t
    a, b = _results(ref), _results(out)
    assert a.keys() == b.keys() == {"dataset", "bounds"}
    assert a["dataset"] == b["dataset"]
    for bound in ("upper", "lower"):
        np.testing.assert_allclose(a["bounds"][bound]["per_state_auc"], b["bounds"][bound]["per_state_auc"], rtol=1e-6)
    assert (out / "report.html").exists()
    assert not [f for f in out.rglob("*") if ".tmp" in f.name]
