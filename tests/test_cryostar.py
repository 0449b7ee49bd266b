"""cryoSTAR: the `cryonb cryostar` verbs end to end on a small simulated hinge dataset, config files
(the reference's `.py` configs read without executing them, YAML, `--cfg-options`), bad input, resume."""
import json
import numpy as np
import pytest
import torch
from cryonb import cli, structure
from cryonb.methods import cryostar as cs

CMD = ("cryonb.commands.cryostar", "cryostar", "cryoSTAR: train-atom | analyze")
SMALL = ["model.model_cfg.encoder_hidden_dims=[64,32]", "data_loader.train_batch_per_gpu=16", "runner.max_steps=4",
         "runner.ckpt_every_n_steps=2", "runner.ref_init_max_epochs=1", "data_process.low_pass_bandwidth=8.0",
         "analyze.cluster_k=3", "analyze.n_points=4"]


@pytest.fixture(autouse=True)
def _verb(monkeypatch):
    # the verb is registered in cli.COMMANDS by the coordinator; the tests do not depend on it
    monkeypatch.setitem(cli.COMMANDS, "cryostar", CMD)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cryostar")
    ds, ref, gt = cs.toy_dataset(d / "data", n=40, D=32, snr=10.0)
    ref.to_pdb(d / "ref.pdb")
    return d, ds, ref, gt


def test_train_atom_cli_outputs_and_resume(data, tmp_path):
    d, ds, ref, gt = data
    base = ["cryostar", "train-atom", "--star", str(d / "data" / "particles.star"), "--ref", str(d / "ref.pdb"),
            "--device", "cpu", "--cfg-options", *SMALL]
    assert cli.main(base + ["-o", str(tmp_path / "a")]) == 0
    for f in ("z.npy", "pca-1.pdb", "pca-2.pdb", "pca-3.pdb", "pred.pdb", "ckpt.pt", "log.jsonl", "report.html"):
        assert (tmp_path / "a" / f).exists(), f
    assert np.load(tmp_path / "a" / "z.npy").shape == (40, 8)
    assert structure.from_pdb(tmp_path / "a" / "pred.pdb").n_models == 3
    assert structure.from_pdb(tmp_path / "a" / "pca-1.pdb").n_models == 4
    # a run stopped after step 2 (its checkpoint) and resumed by the same command ends identically
    cfg = cs.load_config(None, SMALL)
    cs.AtomTrainer(cfg, ds, structure.from_pdb(d / "ref.pdb", model=0), tmp_path / "b", "cpu").run(max_steps=2, progress=False)
    assert cli.main(base + ["-o", str(tmp_path / "b")]) == 0
    la = [json.loads(l)["loss"] for l in open(tmp_path / "a" / "log.jsonl")]
    lb = [json.loads(l)["loss"] for l in open(tmp_path / "b" / "log.jsonl")]
    assert la == lb and len(la) == 4
    assert np.array_equal(np.load(tmp_path / "a" / "z.npy"), np.load(tmp_path / "b" / "z.npy"))
    # analyze re-exports from the checkpoint
    (tmp_path / "a" / "z.npy").unlink()
    assert cli.main(["cryostar", "analyze", "--star", str(d / "data" / "particles.star"), "--ref", str(d / "ref.pdb"),
                     "--device", "cpu", "-o", str(tmp_path / "a"), "--cfg-options", *SMALL]) == 0
    assert np.allclose(np.load(tmp_path / "a" / "z.npy"), np.load(tmp_path / "b" / "z.npy"))


def test_reference_py_config_not_executed(tmp_path):
    marker = tmp_path / "executed"
    p = tmp_path / "1ake.py"
    p.write_text("dataset_attr = dict(\n    apix=1.0,\n    side_shape=128,\n    ref_pdb_path='pdbs/1akeA_50.pdb',\n)\n"
                 "data_process = dict(down_side_shape=128, mask_rad=1.0, low_pass_bandwidth=4.)\n"
                 "loss = dict(dist_keep_ratio=0.8, free_bits=3.0, warmup_step=10000, kl_beta_upper=0.5)\n"
                 "optimizer = dict(lr=1e-4)\nrunner = dict(max_steps=24000)\n")
    cfg = cs.load_config(p)
    assert cfg["loss"]["dist_keep_ratio"] == 0.8 and cfg["optimizer"]["lr"] == 1e-4
    assert cfg["dataset_attr"]["ref_pdb_path"] == "pdbs/1akeA_50.pdb"
    q = tmp_path / "evil.py"
    q.write_text(f"loss = dict(free_bits=open({str(marker)!r}, 'w').write('x'))\n")
    with pytest.raises(cs.InputError, match=r"evil\.py.*line 1.*loss"):
        cs.load_config(q)
    assert not marker.exists()


@pytest.mark.parametrize("text,key", [("loss:\n  dist_keep_ratio: 0\n", "loss.dist_keep_ratio"),
                                      ("optimizer:\n  lr: -1\n", "optimizer.lr"),
                                      ("loss:\n  image_loss: mse\n", "loss.image_loss"),
                                      ("runner:\n  max_steps: 2.5x\n", "runner.max_steps")])
def test_bad_config_exit_2_names_file_and_key(tmp_path, capsys, text, key):
    y = tmp_path / "c.yaml"; y.write_text(text)
    rc = cli.main(["cryostar", "train-atom", str(y), "-o", str(tmp_path / "o"), "--star", "x.star", "--ref", "r.pdb"])
    err = capsys.readouterr().err
    assert rc == 2 and "cryonb cryostar: error:" in err and "c.yaml" in err and key in err


@pytest.mark.parametrize("name", ["c.yaml", "c.py"])
def test_binary_config_exit_2(tmp_path, capsys, name):
    "A binary file given as the config (.yaml or .py) is an input error naming it, not a UnicodeDecodeError traceback."
    y = tmp_path / name; y.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    assert cli.main(["cryostar", "train-atom", str(y), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "cryonb cryostar: error:" in err and name in err and "not a text" in err and "Traceback" not in err


def test_unknown_override_and_missing_inputs(tmp_path, capsys):
    assert cli.main(["cryostar", "train-atom", "-o", str(tmp_path), "--cfg-options", "loss.nope=1"]) == 2
    assert "loss.nope" in capsys.readouterr().err
    assert cli.main(["cryostar", "train-atom", "-o", str(tmp_path)]) == 2
    assert "starfile_path" in capsys.readouterr().err


def test_zero_deformation_renders_reference(data):
    d, ds, ref, gt = data
    cfg = cs.load_config(None, SMALL)
    m = cs.build_atom_model(cfg, ref, ds.D, ds.apix).eval()
    with torch.no_grad():
        for p in m.deformer.net[-1].parameters(): p.zero_()
    b = ds.get_batch(np.arange(5))
    from cryonb.atomic_vae import image_formation
    want = image_formation(ds.D, ds.apix, ref, 8.0)(b["rotations"], b["shifts"], b["ctf"], coords=ref.coords[0].expand(5, -1, -1))
    torch.testing.assert_close(m(b)["pred"], want, atol=0, rtol=0)


def test_learns_the_hinge(data, tmp_path):
    "After a short training the decoded structures are closer to each image's ground truth than the reference is."
    d, ds, ref, gt = data
    cfg = cs.load_config(None, ["model.model_cfg.encoder_hidden_dims=[64,32]", "data_loader.train_batch_per_gpu=40",
                                "runner.max_steps=150", "runner.ckpt_every_n_steps=1000", "optimizer.lr=1e-3",
                                "data_process.low_pass_bandwidth=8.0", "loss.warmup_step=100", "runner.ref_init_max_epochs=1"])
    m = cs.AtomTrainer(cfg, ds, ref, tmp_path, "cpu").run(progress=False)
    from cryonb.atomic_vae import encode, decode_coords
    pred = decode_coords(m, encode(m, ds, device="cpu"))
    rmsd = structure.kabsch_rmsd(pred, gt).median()
    base = structure.kabsch_rmsd(ref.coords[0].expand_as(gt), gt).median()
    assert rmsd < 0.8 * base, (float(rmsd), float(base))


def test_train_density_cli(data, tmp_path):
    d, ds, ref, gt = data
    np.save(tmp_path / "z.npy", np.random.default_rng(0).normal(size=(len(ds), 2)).astype(np.float32))
    args = ["cryostar", "train-density", "--star", str(d / "data" / "particles.star"), "--ref", str(d / "ref.pdb"),
            "-o", str(tmp_path), "--device", "cpu", "--hidden", "32", "--n-blocks", "1", "--max-steps", "2",
            "--density-batch", "4", "--cfg-options", "analyze.cluster_k=2", "analyze.n_points=2", "analyze.n_pcs=1"]
    assert cli.main(args) == 0
    import mrcfile
    with mrcfile.open(tmp_path / "vol_kmeans_001.mrc") as m:
        assert m.data.shape == (32, 32, 32) and abs(float(m.voxel_size.x) - ds.apix) < 1e-6
        assert abs(float(m.header.origin.x) + 16 * ds.apix) < 1e-4
    assert (tmp_path / "vol_pca_1_001.mrc").exists() and (tmp_path / "fsc_kmeans.json").exists()
    (tmp_path / "z.npy").write_bytes(b"")
    np.save(tmp_path / "z.npy", np.zeros((3, 2), np.float32))
    assert cli.main(args) == 2


DDP_SCRIPT = '''
import sys, json, torch
from pathlib import Path
from cryonb import distributed
from cryonb.data import ParticleDataset
from cryonb.methods import cryostar as cs
from cryonb import structure
dev, created = distributed.init_from_env("cpu")
d, out, B = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
ds, ref = ParticleDataset(d / "data" / "particles.star"), structure.from_pdb(d / "ref.pdb", model=0)
cfg = cs.load_config(None, ["model.model_cfg.encoder_hidden_dims=[64,32]", f"data_loader.train_batch_per_gpu={B}",
                            "runner.max_steps=3", "do_ref_init=false", "loss.dist_keep_ratio=0.8"])
m = cs.AtomTrainer(cfg, ds, ref, out, "cpu").run(progress=False)
if distributed.is_main(): torch.save(m.state_dict(), out / "final.pt")
distributed.cleanup(created)
if created: distributed.exit_worker(0)
'''


def test_two_rank_gloo_equals_one_rank(data, tmp_path):
    "2 CPU ranks (gloo) × 8 images train like 1 rank × 16: same losses (elastic mask over the global batch), same weights."
    import subprocess, sys, os
    d, ds, ref, gt = data
    s = tmp_path / "ddp.py"; s.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(s), str(d),
                        str(tmp_path / "two"), "8"], capture_output=True, text=True, timeout=240, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    r1 = subprocess.run([sys.executable, str(s), str(d), str(tmp_path / "one"), "16"], capture_output=True, text=True,
                        timeout=240, env=env)
    assert r1.returncode == 0, r1.stderr[-2000:]
    two = [json.loads(l) for l in open(tmp_path / "two" / "log.jsonl")]
    one = [json.loads(l) for l in open(tmp_path / "one" / "log.jsonl")]
    assert [x["step"] for x in two] == [1, 2, 3] and (tmp_path / "two" / "ckpt.pt").exists()
    for a, b in zip(one, two):
        for k in ("loss", "image", "continuity", "elastic", "kl"):
            assert abs(a[k] - b[k]) <= 1e-5 * abs(a[k]) + 1e-7, (k, a[k], b[k])
    w1, w2 = torch.load(tmp_path / "one" / "final.pt"), torch.load(tmp_path / "two" / "final.pt")
    for k in w1: torch.testing.assert_close(w1[k], w2[k], atol=1e-6, rtol=1e-4)


def test_kill_and_resume(data, tmp_path):
    "SIGKILL a training run after its first checkpoint; the same command resumes, and the log has each step once."
    import os, signal, subprocess, sys, time
    d, ds, ref, gt = data
    opts = [o for o in SMALL if not o.startswith(("runner.max_steps", "runner.ckpt_every"))] + \
           ["runner.max_steps=60", "runner.ckpt_every_n_steps=5"]
    cmd = [sys.executable, "-c", "import sys; from cryonb import cli; cli.COMMANDS['cryostar'] = "
           f"{CMD!r}; sys.exit(cli.main(sys.argv[1:]))", "cryostar", "train-atom", "--star", str(d / "data" / "particles.star"),
           "--ref", str(d / "ref.pdb"), "--device", "cpu", "-o", str(tmp_path), "--cfg-options", *opts]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while time.time() - t0 < 120:
        log = tmp_path / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 12: break
        time.sleep(0.01)                                   # steps take milliseconds: poll often
    p.send_signal(signal.SIGKILL); p.wait()
    assert (tmp_path / "ckpt.pt").exists() and not (tmp_path / "z.npy").exists()
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=300).returncode == 0
    steps = [json.loads(l)["step"] for l in open(tmp_path / "log.jsonl")]
    assert steps == list(range(1, 61))
    assert np.load(tmp_path / "z.npy").shape == (len(ds), 8)


def test_amp_flag(data, tmp_path, capsys):
    "`--amp bf16` trains on CPU (finite losses); `--amp fp16` on CPU is an input error naming CUDA."
    d, ds, ref, gt = data
    base = ["cryostar", "train-atom", "--star", str(d / "data" / "particles.star"), "--ref", str(d / "ref.pdb"),
            "--device", "cpu", "--cfg-options", *SMALL, "do_ref_init=false"]
    assert cli.main(base[:2] + ["--amp", "bf16", "-o", str(tmp_path / "b")] + base[2:]) == 0
    log = [json.loads(l) for l in open(tmp_path / "b" / "log.jsonl")]
    assert len(log) == 4 and all(np.isfinite(r["loss"]) for r in log)
    assert cli.main(base[:2] + ["--amp", "fp16", "-o", str(tmp_path / "h")] + base[2:]) == 2
    assert "fp16" in capsys.readouterr().err
