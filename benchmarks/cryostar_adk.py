"""cryoSTAR on the AdK closed→open benchmark: structures against the ground truth, maps against RECOVAR and the bounds.

    python benchmarks/cryostar_adk.py [--D 64] [--apix 1.5] [--states 10] [--per-state 100] [--snr 0.1]
        [--steps 2000] [--batch 64] [--lr 1e-4] [--density-steps 600] [--density-hidden 128] [--density-blocks 2]
        [--density-batch 8] [--density-lr 1e-3] [--recovar-zdims 2] [--skip recovar bounds density] [--out DIR]

1. The dataset: `cryonb dataset adk` (DIMS closed→open path, `--states` frames × `--per-state` images, ground-truth
   frames in `gt_models.pdb`, state of every image in `labels.npy`) in `OUT/dataset`.
2. The atom generator (`cryonb.methods.cryostar.train_atom`, the reference's 1ake settings unless overridden) starting
   from the **1AKE crystal structure** (`cryonb.datasets.adk_files()["closed"]`, not a frame of the generating path).
   For every image, with its latent μ (`z.npy`) decoded by `atomic_vae.decode_coords`:
   - Kabsch-aligned Cα RMSD of the decoded structure to that image's ground-truth frame (median, and per state);
   - baseline: the unmoved 1AKE against the same frame;
   - ceilings, from the ground-truth Cα models rendered the same way (the trained model's own forward model: pose,
     CTF, shift, Gaussians, low-pass): (a) the image-fit ceiling, the masked Pearson correlation to the low-passed
     image of the image's own ground-truth frame next to that of the decoded structure and of 1AKE; (b) the
     identification ceiling, per image the ground-truth frame whose rendering correlates best with the image (its
     RMSD to the true frame, and how often it is the true one): how well the images alone resolve the states;
   - mean |Cα–Cα bond length − 1AKE's| of the decoded structures (< 0.2 Å expected), with the ground-truth frames'
     own deviation from 1AKE for scale.
3. Per-conformation FSC AUC (`cryonb.cryobench.evaluate`, CryoBench protocol: one map per state at the image latent
   nearest the state's mean latent) of: the density generator (`DensityTrainer`, half-set Hartley fields on the fixed
   stage-1 latents; maps = mean of the half-maps), the atom generator's Gaussian maps (`atomic_vae.decode_map`, as in
   `cryonb demo`), RECOVAR (the `cryonb demo` adapter, `cryonb.methods.recovar.DEMO_METHODS`), and the upper/lower
   bounds (`cryonb.demo.step_bounds`: ground-truth-label back-projection per state / one consensus map).

Every stage writes its JSON into OUT and is skipped when that file exists (delete it to redo); training resumes from its
checkpoint after a kill. Wall times are printed per stage. One thread unless OMP_NUM_THREADS says otherwise.
"""
import argparse, json, os, time
from pathlib import Path
import numpy as np
import torch


def _stage(out: Path, name: str, fn):
    "Run `fn()` unless `OUT/name.json` exists; store its JSON-able result with the wall time."
    f = out / f"{name}.json"
    if f.exists():
        r = json.loads(f.read_text())
        print(f"[{name}] cached ({r.get('wall_s', 0):.0f} s when run)", flush=True)
        return r
    print(f"[{name}] running", flush=True)
    t0 = time.perf_counter()
    r = fn()
    r["wall_s"] = round(time.perf_counter() - t0, 1)
    tmp = f.with_suffix(".tmp")
    tmp.write_text(json.dumps(r, indent=1))
    tmp.replace(f)
    print(f"[{name}] {r['wall_s']:.0f} s", flush=True)
    return r


def make_dataset(ds_dir: Path, D, apix, states, per_state, snr, seed):
    "The benchmark through the command line, as a user makes it."
    from cryonb import cli
    argv = ["dataset", "adk", "-o", str(ds_dir), "--states", str(states), "--images-per-state", str(per_state),
            "-D", str(D), "--apix", str(apix), "--snr", str(snr), "--seed", str(seed), "--device", "cpu"]
    cli.main(argv)
    return {"argv": "cryonb " + " ".join(argv)}


def _lowpass(images, apix, lp_A):
    "Hard low-pass of images `(B,D,D)` at `lp_A` Å (cryoSTAR's `low_pass_bandwidth` on the target)."
    if lp_A is None: return images
    D = images.shape[-1]
    k = torch.fft.fftfreq(D, d=apix)
    keep = (k[:, None] ** 2 + k[None, :] ** 2).sqrt() < 1.0 / lp_A
    return torch.fft.ifft2(torch.fft.fft2(images) * keep).real


def _pearson(p, y, M):
    "Masked Pearson correlation per image of `p, y (B,D,D)` over mask `M (D,D)`."
    n = M.sum()
    pc = (p - (p * M).sum((-1, -2), keepdim=True) / n) * M
    yc = (y - (y * M).sum((-1, -2), keepdim=True) / n) * M
    return (pc * yc).sum((-1, -2)) / ((pc * pc).sum((-1, -2)) * (yc * yc).sum((-1, -2))).sqrt().clamp_min(1e-30)


def atom_stage(out: Path, steps, batch, lr, seed):
    "Train the atom generator from 1AKE and score its structures per image (see the module docstring)."
    from cryonb import datasets, structure
    from cryonb.data import ParticleDataset
    from cryonb.methods import cryostar as cs
    from cryonb.atomic_vae import decode_coords
    ds_dir = out / "dataset"
    ds = ParticleDataset(ds_dir / "particles.star")
    lab = np.load(ds_dir / "labels.npy")
    ref = structure.from_pdb(datasets.adk_files()["closed"], model=0)
    gt_models = structure.from_pdb(ds_dir / "gt_models.pdb")
    G = gt_models.coords.double()                                   # (S,N,3) Å
    if G.shape[1] != ref.coords.shape[1]:
        raise SystemExit(f"gt_models.pdb has {G.shape[1]} residues, 1AKE {ref.coords.shape[1]}")
    cfg = cs.load_config(None, [f"runner.max_steps={steps}", f"data_loader.train_batch_per_gpu={batch}",
                                f"optimizer.lr={lr}", "runner.ckpt_every_n_steps=250",
                                f"loss.warmup_step={max(1, steps // 3)}", f"seed={seed}"])
    t0 = time.perf_counter()
    model = cs.train_atom(cfg, ds, ref, out / "atom", "cpu", progress=False, labels=lab)
    t_train = time.perf_counter() - t0
    model.eval()
    z = np.load(out / "atom" / "z.npy")
    pred = decode_coords(model, z).double()                         # (N_img,N,3)
    gt = G[torch.as_tensor(lab)]
    r_pred = structure.kabsch_rmsd(pred, gt).numpy()
    r_base = structure.kabsch_rmsd(ref.coords[0].double().expand_as(gt), gt).numpy()

    bonded = torch.as_tensor(~np.asarray(ref.breaks, bool))                   # consecutive, bonded residues
    def bonds(x):
        b = (x[..., 1:, :] - x[..., :-1, :]).norm(dim=-1)
        return b[..., bonded]
    b_ref = bonds(ref.coords[0].double())
    bond_dev = float((bonds(pred) - b_ref).abs().mean())
    bond_dev_gt = float((bonds(G) - b_ref).abs().mean())

    # ceilings: ground-truth frames rendered by the trained model's own forward model
    lp = cfg["data_process"]["low_pass_bandwidth"]
    D, apix = ds.D, float(ds.apix)
    yy, xx = torch.meshgrid(torch.arange(D) - D // 2, torch.arange(D) - D // 2, indexing="ij")
    M = ((yy ** 2 + xx ** 2).sqrt() <= cfg["loss"]["mask_rad_for_image_loss"] * D / 2).double()
    S = G.shape[0]
    c_pred, c_gt, c_base = (np.zeros(len(ds)) for _ in range(3))
    best = np.zeros(len(ds), np.int64)
    render = lambda b, X: model.imaging(b["rotations"], b["shifts"], b["ctf"], coords=X.float()).double()
    with torch.no_grad():
        for s0 in range(0, len(ds), 100):
            idx = np.arange(s0, min(s0 + 100, len(ds)))
            b = ds.get_batch(idx)
            y = _lowpass(b["images"].double(), apix, lp)
            c_pred[idx] = _pearson(render(b, pred[idx]), y, M).numpy()
            c_base[idx] = _pearson(render(b, ref.coords[0].expand(len(idx), -1, -1)), y, M).numpy()
            sc = torch.stack([_pearson(render(b, G[s].expand(len(idx), -1, -1)), y, M) for s in range(S)], 1)
            c_gt[idx] = sc[torch.arange(len(idx)), torch.as_tensor(lab[idx])].numpy()
            best[idx] = sc.argmax(1).numpy()
    r_ceil = structure.kabsch_rmsd(G[torch.as_tensor(best)], gt).numpy()
    med = lambda a, m=None: float(np.median(a if m is None else a[m]))
    return {"steps": steps, "batch": batch, "lr": lr, "seed": seed, "train_s": round(t_train, 1),
            "n_images": len(ds), "D": D, "apix": apix, "lowpass_A": lp,
            "median_rmsd_decoded_A": med(r_pred), "median_rmsd_1ake_baseline_A": med(r_base),
            "median_rmsd_identification_ceiling_A": med(r_ceil),
            "identification_ceiling_frame_accuracy": float((best == lab).mean()),
            "median_corr_decoded": med(c_pred), "median_corr_gt_frame_ceiling": med(c_gt), "median_corr_1ake": med(c_base),
            "mean_bond_dev_decoded_A": bond_dev, "mean_bond_dev_gt_frames_vs_1ake_A": bond_dev_gt,
            "per_state": {int(s): {"n": int((lab == s).sum()), "decoded": med(r_pred, lab == s), "baseline_1ake": med(r_base, lab == s),
                                   "ceiling_identification": med(r_ceil, lab == s),
                                   "corr_decoded": med(c_pred, lab == s), "corr_gt": med(c_gt, lab == s)}
                          for s in np.unique(lab)}}


def _auc(res) -> dict:
    "Per-conformation AUC summary of a `cryobench.evaluate` result."
    t = res["per_state"].table
    return {"auc_mean": float(t["auc"].mean()), "auc_std": float(t["auc"].std(ddof=0)),
            "per_state_auc": [round(float(a), 4) for a in t["auc"]]}


def _evaluate(out, z, volumes, name):
    from cryonb import cryobench as cb
    res = cb.evaluate(out / "dataset", z=z, volumes=volumes, rule="direct", per_image=0, embedding=None,
                      method=name, device="cpu")
    return _auc(res)


def density_stage(out: Path, steps, hidden, n_blocks, batch, lr, seed):
    "Stage 2 on the stage-1 latents; AUC of its maps (mean of the half-maps) and of the atom generator's Gaussian maps."
    from cryonb import cryobench as cb, datasets, structure
    from cryonb.data import ParticleDataset
    from cryonb.methods import cryostar as cs
    from cryonb.atomic_vae import decode_map
    ds = ParticleDataset(out / "dataset" / "particles.star")
    lab = np.load(out / "dataset" / "labels.npy")
    z = np.load(out / "atom" / "z.npy")
    zs = np.asarray(cb.state_latents(z, lab).attrs["z"], dtype=np.float32)
    dcfg = {**cs.DENSITY_DEFAULTS, "hidden": hidden, "n_blocks": n_blocks, "max_steps": steps, "batch": batch, "lr": lr,
            "ckpt_every": 100}
    t0 = time.perf_counter()
    tr = cs.DensityTrainer(dcfg, ds, z, out / "density", "cpu", seed).run(progress=False)
    t_train = time.perf_counter() - t0
    with torch.no_grad():
        V = tr.maps(torch.as_tensor(zs)).mean(0).numpy()
    dens = _evaluate(out, z, list(V), "cryoSTAR density")
    # the atom generator's own maps (what `cryonb demo` scores for cryoSTAR)
    ref = structure.from_pdb(datasets.adk_files()["closed"], model=0)
    cfg = cs.load_config(None, ["do_ref_init=False"])
    model = cs.build_atom_model(cfg, ref, ds.D, float(ds.apix))
    model.load_state_dict(torch.load(out / "atom" / "ckpt.pt", map_location="cpu", weights_only=False)["model"])
    model.eval()
    atom = _evaluate(out, z, list(decode_map(model, zs, ds.D, float(ds.apix)).numpy()), "cryoSTAR atom (Gaussian maps)")
    return {"density_cfg": dcfg, "density_train_s": round(t_train, 1), "density": dens, "atom_gaussian_maps": atom}


def recovar_stage(out: Path, zdims):
    "RECOVAR through its `cryonb demo` adapter (pipeline, kernel-regression map per state latent), scored the same way."
    from cryonb import demo
    from cryonb.methods import recovar as rc
    ctx = demo.DemoContext(out, size="small", device="cpu", seed=0)
    m = demo._as_method(rc.DEMO_METHODS[0])
    o = m.run(ctx, {"zdims": tuple(zdims)})
    return {"zdims": list(zdims), **_evaluate(out, o["z"], o["volumes"], "RECOVAR")}


def bounds_stage(out: Path):
    from cryonb import demo
    b = demo.step_bounds(demo.DemoContext(out, size="small", device="cpu", seed=0))
    return {k: {"auc_mean": v["auc_mean"], "auc_std": v["auc_std"], "per_state_auc": [round(a, 4) for a in v["per_state_auc"]]}
            for k, v in b.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--D", type=int, default=64); ap.add_argument("--apix", type=float, default=1.5)
    ap.add_argument("--states", type=int, default=10); ap.add_argument("--per-state", type=int, default=100)
    ap.add_argument("--snr", type=float, default=0.1); ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=2000); ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--density-steps", type=int, default=600); ap.add_argument("--density-hidden", type=int, default=128)
    ap.add_argument("--density-blocks", type=int, default=2); ap.add_argument("--density-batch", type=int, default=8)
    ap.add_argument("--density-lr", type=float, default=1e-3)
    ap.add_argument("--recovar-zdims", type=int, nargs="+", default=[2])
    ap.add_argument("--skip", nargs="*", default=[], choices=["density", "recovar", "bounds"])
    ap.add_argument("--out", default="cryostar_adk")
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if not (out / "dataset" / "particles.star").exists():
        _stage(out, "dataset", lambda: make_dataset(out / "dataset", a.D, a.apix, a.states, a.per_state, a.snr, a.seed))
    r = {"atom": _stage(out, "atom", lambda: atom_stage(out, a.steps, a.batch, a.lr, a.seed + 1))}
    if "density" not in a.skip:
        r["density"] = _stage(out, "density", lambda: density_stage(out, a.density_steps, a.density_hidden, a.density_blocks,
                                                                    a.density_batch, a.density_lr, a.seed + 1))
    if "recovar" not in a.skip: r["recovar"] = _stage(out, "recovar", lambda: recovar_stage(out, a.recovar_zdims))
    if "bounds" not in a.skip: r["bounds"] = _stage(out, "bounds", lambda: bounds_stage(out))

    A = r["atom"]
    print(f"\nAdK closed→open, D={A['D']}, {A['apix']} Å/px, {A['n_images']} images; atom generator {A['steps']} steps "
          f"× batch {A['batch']} (lr {A['lr']}), {A['train_s']:.0f} s training")
    print("\n| state | " + " | ".join(str(s) for s in A["per_state"]) + " | all (median) |")
    print("|---" * (len(A["per_state"]) + 2) + "|")
    for key, label, tot, fmt in (("decoded", "decoded vs that image's frame (Å)", "median_rmsd_decoded_A", ".2f"),
                                 ("baseline_1ake", "unmoved 1AKE, baseline (Å)", "median_rmsd_1ake_baseline_A", ".2f"),
                                 ("ceiling_identification", "best-fitting GT frame, ceiling (Å)", "median_rmsd_identification_ceiling_A", ".2f"),
                                 ("corr_decoded", "image corr., decoded", "median_corr_decoded", ".3f"),
                                 ("corr_gt", "image corr., own GT frame (ceiling)", "median_corr_gt_frame_ceiling", ".3f")):
        print(f"| {label} | " + " | ".join(format(v[key], fmt) for v in A["per_state"].values()) + f" | {format(A[tot], fmt)} |")
    print(f"\nidentification ceiling picks the true frame for {100 * A['identification_ceiling_frame_accuracy']:.1f} % of images; "
          f"median image corr. of 1AKE {A['median_corr_1ake']:.3f}")
    print(f"mean |Cα–Cα bond − 1AKE's|: decoded {A['mean_bond_dev_decoded_A']:.4f} Å "
          f"(ground-truth frames vs 1AKE: {A['mean_bond_dev_gt_frames_vs_1ake_A']:.4f} Å)")
    rows = []
    if "density" in r:
        rows += [("cryoSTAR density generator", r["density"]["density"], r["density"]["wall_s"]),
                 ("cryoSTAR atom generator (Gaussian maps)", r["density"]["atom_gaussian_maps"], None)]
    if "recovar" in r: rows.append((f"RECOVAR (zdim {max(r['recovar']['zdims'])})", r["recovar"], r["recovar"]["wall_s"]))
    if "bounds" in r:
        rows += [("upper bound (GT-label back-projection)", r["bounds"]["upper"], r["bounds"]["wall_s"]),
                 ("lower bound (consensus map)", r["bounds"]["lower"], None)]
    if rows:
        print("\n| per-conformation FSC AUC | mean ± std | per state | wall s |\n|---|---|---|---|")
        for name, v, w in rows:
            print(f"| {name} | {v['auc_mean']:.3f} ± {v['auc_std']:.3f} | {' '.join(f'{x:.2f}' for x in v['per_state_auc'])} "
                  f"| {'' if w is None else f'{w:.0f}'} |")
    print(f"\ntotal wall time {time.perf_counter() - t0:.0f} s (this invocation; cached stages not rerun)")
    (out / "summary.json").write_text(json.dumps(r, indent=1))


if __name__ == "__main__":
    main()
