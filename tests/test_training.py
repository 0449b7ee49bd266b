"""The training engine as real processes: a SIGKILLed run resumes to the uninterrupted run's parameters and
losses bit for bit (CPU), and two gloo ranks train like one process with the doubled batch."""
import json, os, random, signal, subprocess, sys, time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = Path(__file__).with_name("_train_script.py")


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"): env.pop(k, None)
    return env


def _run(args, nproc=1, timeout=180):
    pre = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                f"--nproc_per_node={nproc}"]
    r = subprocess.run(pre + [str(SCRIPT)] + [str(a) for a in args], capture_output=True, text=True, env=_env(), timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _log(d):
    return [json.loads(l) for l in (Path(d) / "train_log.jsonl").read_text().splitlines()]


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    n = 40
    _run([tmp_path / "ref", "--max-steps", n])
    out = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, str(SCRIPT), str(out), "--max-steps", str(n), "--sleep", "0.05"], env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ck = out / "checkpoints"
    t0 = time.time()
    while not any(ck.glob("ckpt_*.pt")) and time.time() - t0 < 120: time.sleep(0.02)
    time.sleep(random.uniform(0.05, 0.6))          # a random step after the first checkpoint
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    assert not (out / "final.pt").exists()          # it really died before the end
    killed_at = len(_log(out))
    _run([out, "--max-steps", n, "--resume"])
    ref, res = torch.load(tmp_path / "ref" / "final.pt"), torch.load(out / "final.pt")
    for k in ref: assert torch.equal(ref[k], res[k]), (k, killed_at)
    assert [d["loss"] for d in _log(out)] == [d["loss"] for d in _log(tmp_path / "ref")]
    assert [d["step"] for d in _log(out)] == list(range(1, n + 1))
    print(f"killed after {killed_at} logged steps; resumed to step {n} bit-exact")


def test_two_ranks_equal_one_rank_doubled_batch(tmp_path):
    _run([tmp_path / "one", "--max-steps", 6, "--batch-size", 16, "--deterministic", "--grad-clip", 1.0])
    _run([tmp_path / "two", "--max-steps", 6, "--batch-size", 8, "--deterministic", "--grad-clip", 1.0], nproc=2)
    one, two = torch.load(tmp_path / "one" / "final.pt"), torch.load(tmp_path / "two" / "final.pt")
    ck = sorted((tmp_path / "two" / "checkpoints").glob("ckpt_*.pt"))[-1]
    assert torch.load(ck, weights_only=False)["world_size"] == 2      # really two ranks
    for k in one: torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)
    l1, l2 = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(l1) == len(l2) == 6
    for a, b in zip(l1, l2):
        for key in ("loss", "mse", "kl", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]) + 1e-7, (key, a, b)
    # the parameters moved (the comparison is not between two untouched initialisations)
    torch.manual_seed(0)
    from cryonb.training import TinyVAE
    init = TinyVAE().state_dict()
    assert any((init[k] - one[k]).abs().max() > 1e-3 for k in one)
