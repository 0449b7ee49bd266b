"""cryoSTAR benchmarks.

    python benchmarks/cryostar.py speed [--sizes 64 128] [--batch 32] [--reference-src PATH]
    python benchmarks/cryostar.py adk [--D 64] [--states 10] [--per-state 100] [--steps 3000] [--out DIR]

`speed`: images per CPU-second of one training step (forward, restraints, backward, AdamW) of the atom
generator on AdK (214 residues, 1AKE) at batch 32 with one thread, and the peak resident memory. The
reference (bytedance/cryostar) is not on PyPI: `--reference-src` may point at a checkout; its step is not
driven here yet (the figures the issue's author measured: 414 img/CPU-s at D=64, 114 at D=128).

`adk`: trains on `cryonb.datasets.make_adk_dataset` (closed→open DIMS path) starting from the 1AKE crystal
structure and reports, per image, the Kabsch-aligned Cα RMSD of the decoded structure to that image's
ground-truth frame (median overall and per state), next to the unmoved reference (baseline), and the mean
bond-length deviation of the decoded structures.
"""
import argparse, json, os, resource, sys, time
from pathlib import Path
import numpy as np
import torch


def _adk_reference():
    from cryonb import datasets, structure
    return structure.from_pdb(datasets.adk_files()["closed"], model=0)


def speed(sizes, batch, steps, reference_src=None, device="cpu", amp=False):
    torch.set_num_threads(1)
    dev = torch.device(device)
    from cryonb.methods import cryostar as cs
    from cryonb.ctf import CTFParams
    from cryonb.geometry import random_rotations
    ref = _adk_reference()
    rows = []
    for D in sizes:
        apix = 1.0 if D == 128 else 2.0
        cfg = cs.load_config(None, [f"data_loader.train_batch_per_gpu={batch}"])
        model = cs.build_atom_model(cfg, ref, D, apix).to(dev)
        rs = cs.make_restraints(cfg, ref, dev)
        opt = cs.make_optimizer(model.parameters(), 1e-4)
        from cryonb.atomic_vae import circular_mask, masked_correlation_loss, kl_free_bits
        M = circular_mask(D, 0.9375, dev)
        g = torch.Generator().manual_seed(0)
        b = {"images": torch.randn(batch, D, D, generator=g), "rotations": random_rotations(batch, seed=0),
             "shifts": torch.randn(batch, 2, generator=g),
             "ctf": CTFParams(torch.full((batch,), 15000.), torch.full((batch,), 14500.), torch.full((batch,), 30.),
                              torch.full((batch,), 300.), torch.full((batch,), 2.7), torch.full((batch,), 0.1))}
        b = {k: v.to(dev) for k, v in b.items()}

        def step():
          with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            out = model(b)
            c = out["coords"]
            loss = (masked_correlation_loss(out["pred"], b["images"], M) + sum(rs.losses(c).values())
                    + 0.5 * kl_free_bits(out["mu"], out["logvar"], 3.0) / M.sum())
          opt.zero_grad(); loss.backward(); opt.step()
        for _ in range(2): step()
        if dev.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
        t0, w0 = time.process_time(), time.perf_counter()
        for _ in range(steps): step()
        if dev.type == "cuda": torch.cuda.synchronize()
        cpu, wall = time.process_time() - t0, time.perf_counter() - w0
        rows.append({"D": D, "batch": batch, "device": str(dev), "amp_bf16": amp, "img_per_cpu_s": batch * steps / cpu,
                     "img_per_wall_s": batch * steps / wall,
                     "cuda_peak_MiB": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None,
                     "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                     "reference_img_per_cpu_s (issue)": {64: 414, 128: 114}.get(D)})
        print(json.dumps(rows[-1]), flush=True)
    if reference_src:
        print(f"--reference-src {reference_src}: driving the reference's training_step is not implemented yet", file=sys.stderr)
    return rows


def adk(D, states, per_state, steps, out, snr, lr, batch, seed=0):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from cryonb import datasets, structure
    from cryonb.data import ParticleDataset
    from cryonb.methods import cryostar as cs
    from cryonb.atomic_vae import encode, decode_coords
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    apix = 1.5 if D == 64 else 1.0
    if not (out / "data" / "particles.star").exists() and not list((out / "data").glob("*.star")):
        datasets.make_adk_dataset(out / "data", states=states, images_per_state=per_state, D=D, apix=apix, snr=snr, seed=seed)
    star = sorted((out / "data").glob("*.star"))[0]
    ds = ParticleDataset(star, labels=sorted((out / "data").glob("labels*"))[0] if list((out / "data").glob("labels*")) else None)
    ref = _adk_reference()
    gt_models = structure.from_pdb(out / "data" / "gt_models.pdb")
    lab = ds.labels.numpy()
    gt = gt_models.coords[torch.as_tensor(lab)]
    cfg = cs.load_config(None, [f"runner.max_steps={steps}", f"data_loader.train_batch_per_gpu={batch}", f"optimizer.lr={lr}",
                                "runner.ckpt_every_n_steps=500", f"loss.warmup_step={max(1, steps // 3)}"])
    t0 = time.time()
    model = cs.AtomTrainer(cfg, ds, ref, out / "run", "cpu").run(progress=False)
    t_train = time.time() - t0
    z = encode(model, ds, device="cpu")
    pred = decode_coords(model, z)
    r_pred = structure.kabsch_rmsd(pred.double(), gt.double()).numpy()
    r_base = structure.kabsch_rmsd(ref.coords[0].double().expand_as(gt), gt.double()).numpy()
    bonds = lambda x: (x[:, 1:] - x[:, :-1]).norm(dim=-1)
    bond_dev = float((bonds(pred) - bonds(ref.coords[0][None])).abs().mean())
    # ceiling: per image, the ground-truth frame whose rendering (same forward model, pose, CTF, shift, low-pass)
    # correlates best with the image; its RMSD to the image's true frame is what the images alone can resolve
    from cryonb.atomic_vae import image_formation, pearson_loss, circular_mask
    imf = image_formation(D, apix, ref, cfg["data_process"]["low_pass_bandwidth"])
    M = circular_mask(D, 0.9375)
    best = np.zeros(len(ds), np.int64)
    with torch.no_grad():
        for s0 in range(0, len(ds), 100):
            b = ds.get_batch(np.arange(s0, min(s0 + 100, len(ds))))
            y = model._target(b["images"]) if hasattr(model, "_target") else b["images"]
            scores = []
            for S in range(gt_models.n_models):
                p = imf(b["rotations"], b["shifts"], b["ctf"], coords=gt_models.coords[S].expand(len(y), -1, -1))
                pc = p - (p * M).sum((-1, -2), keepdim=True) / M.sum(); yc = y - (y * M).sum((-1, -2), keepdim=True) / M.sum()
                scores.append(((pc * yc * M).sum((-1, -2)) / ((pc * pc * M).sum((-1, -2)) * (yc * yc * M).sum((-1, -2))).sqrt()))
            best[s0:s0 + len(y)] = torch.stack(scores, 1).argmax(1).numpy()
    r_ceil = structure.kabsch_rmsd(gt_models.coords[torch.as_tensor(best)].double(), gt.double()).numpy()
    res = {"D": D, "apix": apix, "n_images": len(ds), "steps": steps, "batch": batch, "train_s": round(t_train, 1),
           "median_rmsd_decoded_A": float(np.median(r_pred)), "median_rmsd_reference_A": float(np.median(r_base)),
           "median_rmsd_ceiling_best_gt_frame_A": float(np.median(r_ceil)), "ceiling_frame_accuracy": float((best == lab).mean()),
           "per_state": {int(s): {"decoded": float(np.median(r_pred[lab == s])), "reference": float(np.median(r_base[lab == s])),
                             "ceiling": float(np.median(r_ceil[lab == s]))}
                         for s in np.unique(lab)},
           "mean_bond_length_deviation_A": bond_dev}
    print(json.dumps(res, indent=1))
    (out / "adk_result.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("speed"); s.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    s.add_argument("--batch", type=int, default=32); s.add_argument("--steps", type=int, default=10)
    s.add_argument("--reference-src", default=None); s.add_argument("--device", default="cpu")
    s.add_argument("--amp", action="store_true", help="bfloat16 autocast")
    a = sub.add_parser("adk"); a.add_argument("--D", type=int, default=64); a.add_argument("--states", type=int, default=10)
    a.add_argument("--per-state", type=int, default=100); a.add_argument("--steps", type=int, default=2000)
    a.add_argument("--batch", type=int, default=64); a.add_argument("--lr", type=float, default=1e-4)
    a.add_argument("--snr", type=float, default=0.1); a.add_argument("--out", default="cryostar_adk")
    args = ap.parse_args()
    if args.mode == "speed": speed(args.sizes, args.batch, args.steps, args.reference_src, args.device, args.amp)
    else: adk(args.D, args.states, args.per_state, args.steps, args.out, args.snr, args.lr, args.batch)
