"""CUDA checks and GPU figures for the forward model, reconstruction, CryoSieve and RECOVAR.

Each check runs the same work on the CPU and on the GPU and compares the results (they must agree to
the stated tolerance), then times the GPU path. Run on a machine with a GPU:

    python benchmarks/gpu_check.py [--quick]

Prints one line per check: PASS/FAIL, the CPU-GPU difference, and the GPU throughput.
"""
import argparse, math, sys, tempfile, time
from pathlib import Path
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from cryonb import projection as P
from cryonb.geometry import random_rotations
from cryonb.synthetic import test_data_path, blob_dataset, synthetic_dataset

RESULTS = []

def report(name, ok, detail):
    RESULTS.append(ok)
    print(f"{'PASS' if ok else 'FAIL'}  {name}: {detail}", flush=True)

def sync(dev):
    if dev.type == "cuda": torch.cuda.synchronize()

def timeit(fn, dev, repeat=3):
    fn(); sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeat): fn()
    sync(dev)
    return (time.perf_counter() - t0) / repeat

def check_projection(dev, D=128, B=512):
    g = torch.Generator().manual_seed(0)
    vol = torch.randn(D, D, D, generator=g)
    R = random_rotations(B, seed=1, device="cpu")
    cpu = P.project_ft(P.prepare_volume(vol), R[:32])
    gpu = P.project_ft(P.prepare_volume(vol.to(dev)), R[:32].to(dev)).cpu()
    err = float((cpu - gpu).abs().max() / cpu.abs().max())
    vft = P.prepare_volume(vol.to(dev)); Rd = R.to(dev)
    t = timeit(lambda: P.project_ft(vft, Rd), dev)
    report(f"project D={D}", err < 1e-4, f"max rel. diff CPU-GPU {err:.1e}; {B / t:,.0f} slices/s on {dev}")
    # adjointness on the GPU, float64
    x = torch.randn(32, 32, 32, dtype=torch.float64, generator=g).to(dev)
    y = torch.randn(16, 32, 32, dtype=torch.complex128, generator=g).to(dev)
    R64 = random_rotations(16, seed=2, device=dev, dtype=torch.float64)
    lhs = torch.vdot(P.project_ft(P.prepare_volume(x), R64).flatten(), y.flatten()).real
    rhs = torch.vdot(x.flatten().to(torch.complex128), P.backproject(y, R64, 32).flatten().to(torch.complex128)).real
    rel = float(abs(lhs - rhs) / abs(lhs))
    report("adjoint <Px,y> = <x,P*y> (float64, GPU)", rel < 1e-10, f"relative gap {rel:.1e}")
    c = torch.randn(214, 3, generator=g) * 12
    img_c = P.render_gmm_2d(c, torch.ones(214), 2.0, R[:64], D, 1.0)
    img_g = P.render_gmm_2d(c.to(dev), torch.ones(214, device=dev), 2.0, R[:64].to(dev), D, 1.0).cpu()
    e2 = float((img_c - img_g).abs().max() / img_c.abs().max())
    cd, Rd2 = c.to(dev), R.to(dev)
    t2 = timeit(lambda: P.render_gmm_2d(cd, torch.ones(214, device=dev), 2.0, Rd2, D, 1.0), dev)
    report(f"render_gmm_2d N=214 D={D}", e2 < 1e-4, f"max rel. diff {e2:.1e}; {B / t2:,.0f} images/s")

def check_reconstruction(dev):
    from cryonb.data import ParticleDataset
    from cryonb.reconstruction import reconstruct_dataset
    ds = ParticleDataset(test_data_path("toy_projections.mrcs"), poses=test_data_path("toy_angles.pkl"))
    a = reconstruct_dataset(ds, batch_size=500, device="cpu", halfsets="random")
    t0 = time.perf_counter()
    b = reconstruct_dataset(ds, batch_size=500, device=dev, halfsets="random")
    t = time.perf_counter() - t0
    va, vb = torch.as_tensor(a["map"]).double().flatten(), torch.as_tensor(b["map"]).double().cpu().flatten()
    cc = float(torch.corrcoef(torch.stack([va, vb]))[0, 1])
    report("reconstruct_dataset toy (1000 images, D=30)", cc > 0.9999, f"CPU-GPU map correlation {cc:.6f}; {len(ds) / t:,.0f} images/s")

def check_cryosieve(dev, n=1000, D=128):
    from cryonb.methods import cryosieve as cs
    with tempfile.TemporaryDirectory() as td:
        d = blob_dataset(Path(td), n=n, D=D, apix=1.32, junk_fraction=0.2, noise_sigma=3.0, seed=0, n_blobs=60)
        parts = cs.SieveParticles(d["star"])
        vol, mask = cs.load_map(d["map"])[0], cs.load_map(d["mask"])[0]
        rows = np.arange(64)
        s_cpu = cs.score_particles(parts, [vol, vol], 40.0, mask=mask, rows=rows, device="cpu")
        s_gpu = cs.score_particles(parts, [vol, vol], 40.0, mask=mask, rows=rows, device=dev)
        rel = float(np.abs(s_cpu - s_gpu).max() / np.abs(s_cpu).max())
        t = timeit(lambda: cs.score_particles(parts, [vol, vol], 40.0, mask=mask, device=dev, batch_size=256), dev, repeat=1)
        ts = timeit(lambda: cs.score_particles(parts, [vol, vol], 40.0, mask=mask, device=dev, batch_size=256,
                                               precision="single"), dev, repeat=1)
        report(f"CryoSieve scores D={D}", rel < 1e-8, f"max rel. diff {rel:.1e}; {n / t:,.0f} particles/s (double), "
               f"{n / ts:,.0f} (single)")

def check_recovar(dev, D=32, n=2000):
    from cryonb.methods import recovar as rc
    syn = synthetic_dataset(D=D, n=n, n_states=3, snr=1.0, ctf=True, seed=0)
    out = {}
    for d in ("cpu", dev):
        src = rc.source_from_synthetic(syn, device=d)
        t0 = time.perf_counter()
        res = rc.recovar_pipeline(src, zdims=(2, 4), n_columns=100, n_pcs=10, block_size=20, log=None)
        out[str(d)] = (res, time.perf_counter() - t0)
    (rc_, tc), (rg, tg) = out["cpu"], out[str(dev)]
    ang = rc.principal_angles(rg.u[:2].cpu(), rc_.u[:2].cpu())
    report(f"RECOVAR pipeline D={D}, {n} images", float(np.max(ang)) < 5.0,
           f"top-2 eigenvolume angles CPU vs GPU {np.round(ang, 2).tolist()} deg; CPU {tc:.1f} s, GPU {tg:.1f} s")

def check_training(dev):
    "The training engine on the GPU: fp32, bf16 and fp16 (GradScaler) learn the tiny VAE; a resumed run equals an uninterrupted one."
    from cryonb.training import TrainConfig, Trainer, TinyVAE, blob_images, vae_step
    data = blob_images(256, 16, seed=0)
    for amp in (None, "bf16", "fp16") if dev.type == "cuda" else (None, "bf16"):
        with tempfile.TemporaryDirectory() as td:
            torch.manual_seed(0)
            model = TinyVAE(16, 1, 64)
            cfg = TrainConfig(max_steps=150, batch_size=64, lr=3e-3, amp=amp, out_dir=td, ckpt_every=50, progress=False)
            tr = Trainer(model, cfg, vae_step(), device=dev)
            hist = tr.fit(data)
            first, last = hist[0]["mse"], hist[-1]["mse"]
            report(f"training TinyVAE amp={amp}", np.isfinite(last) and last < 0.5 * first,
                   f"mse {first:.4f} -> {last:.4f} on {next(tr.model.parameters()).device}")
    with tempfile.TemporaryDirectory() as td:
        torch.manual_seed(0); full = Trainer(TinyVAE(16, 1, 64), TrainConfig(max_steps=60, batch_size=64, lr=3e-3, out_dir=f"{td}/a",
                                                                         ckpt_every=20, log_every=1, progress=False), vae_step(), device=dev)
        ha = full.fit(data)
        torch.manual_seed(0); part = Trainer(TinyVAE(16, 1, 64), TrainConfig(max_steps=40, batch_size=64, lr=3e-3, out_dir=f"{td}/b",
                                                                         ckpt_every=20, log_every=1, progress=False), vae_step(), device=dev)
        part.fit(data)
        torch.manual_seed(1); res = Trainer(TinyVAE(16, 1, 64), TrainConfig(max_steps=60, batch_size=64, lr=3e-3, out_dir=f"{td}/b",
                                                                        ckpt_every=20, log_every=1, progress=False), vae_step(), device=dev)
        hb = res.fit(data, resume=True)
        diff = max(abs(a["loss"] - b["loss"]) for a, b in zip(ha[40:], hb[-20:]))
        report("training resume on the GPU", diff < 1e-4, f"max |loss difference| over the resumed steps {diff:.1e}")

def check_restraints(dev):
    from cryonb.structure import from_pdb
    from cryonb.restraints import Restraints
    cg = from_pdb(test_data_path("adk_closed_1ake.pdb"))
    r = Restraints.from_model(cg, keep_ratio=0.8, device="cpu")
    x = cg.coords.repeat(8, 1, 1) + 0.3 * torch.randn(8, cg.n_res, 3, generator=torch.Generator().manual_seed(0))
    lc = r.losses(x)
    lg = r.to(dev).losses(x.to(dev))
    diff = max(abs(float(lc[k]) - float(lg[k])) / max(abs(float(lc[k])), 1e-12) for k in lc)
    report("restraints CPU vs GPU (AdK, batch 8)", diff < 1e-4, f"max rel. diff {diff:.1e}: " +
           ", ".join(f"{k} {float(v):.4g}" for k, v in lc.items()))

def check_cryostar(dev):
    """cryoSTAR's atom generator trains on the GPU in fp32, bf16 and fp16 (learns the toy hinge: decoded structures
    closer to each image's ground truth than the reference is)."""
    from cryonb.methods import cryostar as cs
    from cryonb.atomic_vae import encode, decode_coords
    from cryonb import structure
    with tempfile.TemporaryDirectory() as td:
        ds, ref, gt = cs.toy_dataset(f"{td}/data", n=40, D=32, snr=10.0)
        base = float(structure.kabsch_rmsd(ref.coords[0].expand_as(gt), gt).median())
        for amp in ("none", "bf16", "fp16") if dev.type == "cuda" else ("none", "bf16"):
            cfg = cs.load_config(None, ["model.model_cfg.encoder_hidden_dims=[64,32]", "data_loader.train_batch_per_gpu=40",
                                        "runner.max_steps=150", "runner.ckpt_every_n_steps=1000", "optimizer.lr=1e-3",
                                        "data_process.low_pass_bandwidth=8.0", "loss.warmup_step=100",
                                        "runner.ref_init_max_epochs=1"] + ([f"runner.amp={amp}"] if amp != "none" else []))
            t0 = time.perf_counter()
            m = cs.AtomTrainer(cfg, ds, ref, f"{td}/{amp}", dev).run(progress=False)
            rmsd = float(structure.kabsch_rmsd(decode_coords(m, encode(m, ds)).cpu(), gt).median())
            report(f"cryoSTAR atom generator amp={amp}", rmsd < 0.8 * base,
                   f"median RMSD {rmsd:.2f} A vs reference {base:.2f} A, {time.perf_counter() - t0:.1f} s on {next(m.parameters()).device}")

def check_cryosphere(dev):
    "cryoSPHERE's toy experiment trains on the GPU with finite losses and moves towards the ground truth."
    from cryonb.methods import cryosphere as cs
    from cryonb import structure
    with tempfile.TemporaryDirectory() as td:
        t = cs.toy_experiment(td, n=40)
        t0 = time.perf_counter()
        m = cs.run_experiment(t["parameters"], device=dev, progress=False)
        from cryonb.atomic_vae import decode_coords
        z = np.load(f"{td}/cryoSPHERE/z.npy")
        pred = decode_coords(m, z).cpu()
        gt = torch.as_tensor(t["gt"], dtype=pred.dtype)
        rmsd = float(structure.kabsch_rmsd(pred, gt).median())
        base = float(structure.kabsch_rmsd(m.deformer.reference.cpu()[None].expand_as(gt) if m.deformer.reference.dim() == 2
                                           else m.deformer.reference.cpu().expand_as(gt), gt).median())
        report("cryoSPHERE toy experiment", np.isfinite(rmsd) and rmsd < base,
               f"median RMSD {rmsd:.2f} A vs base {base:.2f} A, {time.perf_counter() - t0:.1f} s on {next(m.parameters()).device}")

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true", help="smaller sizes (for a CPU dry run)")
    ap.add_argument("--only", nargs="+", default=None, help="run only these checks (projection, reconstruction, "
                    "cryosieve, recovar, training, restraints, cryostar, cryosphere)")
    a = ap.parse_args()
    dev = torch.device(a.device)
    if dev.type == "cuda":
        print(torch.cuda.get_device_name(0), "torch", torch.__version__, flush=True)
    q = a.quick
    for fn, kw in ((check_projection, dict(D=32 if q else 128, B=64 if q else 512)), (check_reconstruction, {}),
                   (check_cryosieve, dict(n=100 if q else 1000, D=32 if q else 128)),
                   (check_recovar, dict(D=16 if q else 32, n=300 if q else 2000)), (check_training, {}), (check_restraints, {}),
                   (check_cryostar, {}), (check_cryosphere, {})):
        if a.only and fn.__name__.removeprefix("check_") not in a.only: continue
        try:
            fn(dev, **kw)
        except Exception as e:
            import traceback; traceback.print_exc()
            report(fn.__name__, False, f"{type(e).__name__}: {e}")
    if dev.type == "cuda": print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    print(f"{sum(RESULTS)} passed, {len(RESULTS) - sum(RESULTS)} failed")
    sys.exit(0 if all(RESULTS) else 1)
