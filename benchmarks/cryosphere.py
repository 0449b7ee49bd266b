"""cryoSPHERE training-step throughput: cryonb next to the reference (cryosphere 0.6.1), same run.

    python benchmarks/cryosphere.py speed [--sizes 64 128] [--batch 32] [--steps 10] [--segments 20] [--lie]
                                          [--repeats 3] [--reference-python ../venvs/cryosphere/bin/python]
    python benchmarks/cryosphere.py cryonb --data DIR --D 64 --apix 1.5 [--batch 32] [--steps 10] [--segments 20] [--lie]
    <venv>/bin/python benchmarks/cryosphere.py reference --data DIR --D 64 --apix 1.5 --pdb 1AKE.pdb [--batch 32] [--steps 10]

`speed` (cryonb's interpreter): for each box size it simulates a small AdK closed→open set with
`cryonb.datasets.make_adk_dataset` (214 residues, 1AKE as the base structure; 100 images, enough for the
reference's f_std estimate), times cryonb's cryoSPHERE training step on one batch of those images, then
runs this same file in `reference` mode under `--reference-python` (a venv holding cryosphere==0.6.1 and
CPU torch, see benchmarks/README.md) on the same files, and prints both throughputs, peak memory and the
ratio cryonb / reference.

What one "step" is, on both sides: a batch of `--batch` images (pre-loaded, so file reading is not
timed) → encoder → latent sample → segmentation sample → decoder → per-residue rigid motion →
pose rotation → Gaussian projection → CTF → correlation loss + KL terms + L2 + continuity + full clash
loss → backward → Adam step (the reference also shifts and low-passes the target; cryonb shifts the prediction by a
phase ramp and applies the L2 penalty as Adam weight decay). cryonb's side is `methods.cryosphere.make_trainer`'s
step function and optimizer (`cryonb` mode) without the Trainer's NaN guard, so non-finite losses are counted on
both sides instead of stopping one. One thread (`torch.set_num_threads(1)`), CPU, 2 warm-up steps then
`--steps` timed steps. Figures: images per CPU-second (`time.process_time`), images per wall-second,
peak resident set (VmHWM of the whole process, so it includes the interpreter, torch and the data).

`reference` (the reference venv's interpreter; imports nothing from cryonb): builds the reference's
objects through its own `cryosphere.model.utils.parse_yaml` from a parameters.yaml written with the
values of the reference's example file (N_segm = `--segments`, full clash loss, Adam 3e-5 / 3e-4,
`device: CPU`, `wandb: False`) and drives its model, renderer and `compute_loss` directly, because its
`cryosphere_train` entry point needs CUDA and NCCL. Two imports the CPU venv cannot satisfy are stubbed
before importing it: `wandb` (never called with `wandb: False`) and `torchvision.transforms.functional`
(`resize` is only called when Npix_downsize != Npix, never here). It prints one JSON line.

The reference's code is GPL-3.0: this file only calls it, it copies none of it.
"""
import argparse, json, math, os, resource, subprocess, sys, tempfile, time, types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _peak_rss_mib():
    """Peak resident set of this process (VmHWM; `ru_maxrss` survives `execve`, so a child would report its parent's)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"): return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---------------------------------------------------------------- reference side (cryosphere venv)
def _stub_reference_imports():
    """Stub `wandb` and `torchvision.transforms.functional` (see the module docstring)."""
    import torch
    if "wandb" not in sys.modules:
        try:
            import wandb  # noqa: F401
        except ImportError:
            w = types.ModuleType("wandb")
            def _no(*a, **k): raise RuntimeError("wandb stub: run with wandb: False")
            w.login = w.init = w.log = w.Image = _no
            sys.modules["wandb"] = w
    try:
        import torchvision.transforms.functional  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision"); tr = types.ModuleType("torchvision.transforms")
        fn = types.ModuleType("torchvision.transforms.functional")
        def resize(img, size, antialias=True):  # bilinear antialiased, as torchvision's tensor path
            return torch.nn.functional.interpolate(img[None], size=list(size), mode="bilinear",
                                                   align_corners=False, antialias=antialias)[0]
        fn.resize = resize; tr.functional = fn; tv.transforms = tr
        sys.modules.update({"torchvision": tv, "torchvision.transforms": tr, "torchvision.transforms.functional": fn})


def reference_parameters(folder, star, pdb, n_images, batch, segments, seed=1, full_clash=True):
    """The reference's example parameters.yaml values (GitHub Gabriel-Ducrocq/cryoSPHERE), CPU, no wandb."""
    return {
        "name": "bench", "wandb": False, "wandb_project": "none", "folder_path": str(folder),
        "base_structure_path": str(pdb), "image_yaml": "images.yaml", "particles_path": str(Path(star).parent),
        "cs_star_file": {"file": str(star)},
        "segmentation_config": {"part1": {"all_protein": True, "N_segm": segments}},
        "lp_bandwidth": None, "loss_mask_radius": 1, "input_mask_radius": 1, "latent_dimension": 8,
        "tau_segmentation": 0.05, "device": "CPU", "num_workers": 0, "amortized": True, "N_images": n_images,
        "N_epochs": 300, "batch_size": batch, "epsilon_kl": "1e-10", "seed": seed, "deterministic_cuda": False,
        "encoder": {"hidden_dimensions": [512, 256, 64, 64]}, "decoder": {"hidden_dimensions": [512, 512]},
        "optimizer": {"name": "adam", "learning_rate": 3e-5, "learning_rate_segmentation": 3e-4},
        "loss": {"clashing_loss": {"full_clashing_loss": full_clash, "clashing_cutoff": 4, "min_clashing_cutoff_pairs": 4,
                                   "max_clashing_cutoff_pairs": 10, "schedule": "constant", "beta": 0.1},
                 "continuity_loss": {"schedule": "constant", "beta": 0.1},
                 "KL_prior_latent": {"schedule": "linear"}, "KL_prior_segmentation_mean": {"schedule": "linear"},
                 "KL_prior_segmentation_std": {"schedule": "linear"},
                 "KL_prior_segmentation_proportions": {"schedule": "cyclical", "M": 5, "R": 0.5},
                 "l2_pen": {"schedule": "constant", "beta": 1e-6}},
        "resume_training": {"model": None, "segmentation": None},
    }


def reference(data, D, apix, batch, steps, segments, pdb, full_clash=True, epoch=150):
    """Time the reference's training step on CPU, one thread; print and return one JSON row."""
    import torch, yaml
    torch.set_num_threads(1)
    _stub_reference_imports()
    here = Path(__file__).resolve().parent  # this file is itself named cryosphere.py: keep its folder off the path
    sys.path[:] = [q for q in sys.path if Path(q or ".").resolve() != here]
    import cryosphere
    from cryosphere.model import utils as U, renderer
    from cryosphere.model.loss import compute_loss
    data, pdb = Path(data).resolve(), Path(pdb).resolve()
    star = data / "particles.star"
    work = Path(tempfile.mkdtemp(prefix="cryosphere_ref_"))
    n_images = sum(1 for line in star.read_text().splitlines() if "@" in line)
    (work / "images.yaml").write_text(yaml.safe_dump({"apix": apix, "Npix": D, "Npix_downsize": D, "sigma_gmm": 2}))
    p = work / "parameters.yaml"
    p.write_text(yaml.safe_dump(reference_parameters(work, star, pdb, n_images, batch, segments, full_clash=full_clash)))
    cwd = os.getcwd(); os.chdir(work)
    try:
        (vae, translator, ctf, grid, gmm, opt, ds, n_epochs, bs, settings, device, sched, base, lp_mask, mask, amortized,
         path_results, struct_params, segmenter) = U.parse_yaml(str(p), 0)
    finally:
        os.chdir(cwd)
    items = [ds[i] for i in range(batch)]
    idx = torch.tensor([it[0] for it in items]); images = torch.stack([it[1] for it in items])
    poses = torch.stack([it[2] for it in items]); trans = torch.stack([it[3] for it in items])
    N = base.coord.shape[0]
    losses = []

    def step():  # the body of cryosphere_train.start_training, without DDP (the reference's own calls, in its order)
        track = {k: [] for k in ["correlation_loss", "kl_prior_latent", "kl_prior_segmentation_mean", "kl_prior_segmentation_std",
                                 "kl_prior_segmentation_proportions", "l2_pen", "continuity_loss", "clashing_loss"]}
        target = U.low_pass_images(translator.transform(images, trans[:, None, :]), lp_mask)
        z, mu, std = vae.sample_latent(images.flatten(start_dim=-2))
        seg = segmenter.sample_segments(images.shape[0])
        quat, tr = vae.decode(z)
        t_res = U.compute_translations_per_residue(tr, seg, N, batch, device)
        X = U.deform_structure(gmm.mus, t_res, quat, seg, device)
        pred = renderer.apply_ctf(renderer.project(renderer.rotate_structure(X, poses), gmm.sigmas, gmm.amplitudes, grid),
                                  ctf, idx) / ds.f_std
        loss = compute_loss(pred, target, None, mu, std, vae, segmenter, settings, track, structural_loss_parameters=struct_params,
                            epoch=epoch, predicted_structures=X, device=device)
        loss.backward(); opt.step(); opt.zero_grad()
        losses.append(float(loss))

    for _ in range(2): step()
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps): step()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    row = {"tool": f"cryosphere {getattr(cryosphere, '__version__', '0.6.1')}", "D": D, "batch": batch, "segments": segments,
           "residues": int(N), "full_clash": full_clash, "img_per_cpu_s": batch * steps / cpu, "img_per_wall_s": batch * steps / wall,
           "peak_rss_MiB": _peak_rss_mib(), "torch": torch.__version__, "threads": torch.get_num_threads(),
           "loss_finite_steps": sum(map(lambda v: v == v, losses)), "steps_total": len(losses)}
    print(json.dumps(row), flush=True)
    return row


# ---------------------------------------------------------------- cryonb side (cryonb's interpreter)
def _adk_data(root, D):
    """100 AdK images (2 DIMS states × 50) at box D: 1.5 Å/px at D = 64, 1 Å/px at D = 128 (96 / 128 Å box)."""
    from cryonb import datasets
    apix = 1.5 if D == 64 else 1.0 if D == 128 else 96.0 / D
    d = Path(root) / f"adk_D{D}"
    if not (d / "particles.star").exists():
        datasets.make_adk_dataset(d, states=2, images_per_state=50, D=D, apix=apix, snr=0.1, seed=0)
    return d, apix


def cryonb_speed(data, D, apix, batch, steps, segments, lie=False, pdb=None):
    """Time cryonb's cryoSPHERE training step on one pre-loaded batch (see the module docstring): the model, loss
    and optimizer of `cryonb.methods.cryosphere.train` with the reference example's settings, one
    `training.Trainer` step (forward, loss, backward, NaN guard, grad norm, Adam) per call."""
    import numpy as np, torch
    torch.set_num_threads(1)
    from cryonb import datasets, training
    from cryonb.data import ParticleDataset
    from cryonb.methods import cryosphere as sp
    ds = ParticleDataset(Path(data) / "particles.star")
    image = sp.parse_image({"apix": float(apix), "Npix": D, "Npix_downsize": D, "sigma_gmm": 2.0}, "benchmark")
    base = sp.read_base_structure(pdb or datasets.adk_files()["closed"], image)
    prm = sp.parse_parameters({"folder_path": "-", "base_structure_path": "-", "image_yaml": "-", "cs_star_file": {"file": "-"},
                               "segmentation_config": {"part1": {"all_protein": True, "N_segm": segments}},
                               "batch_size": batch, "num_workers": 0, "seed": 1, "N_epochs": 300,
                               "rotation_blend": "lie" if lie else "sequential",
                               "optimizer": {"name": "adam", "learning_rate": 3e-5, "learning_rate_segmentation": 3e-4}}, "benchmark")
    model = sp.build_model(prm, image, base, len(ds), sp.estimate_f_std(ds))
    n_batches = len(ds) // batch
    cfg = training.TrainConfig(epochs=300, batch_size=batch, lr=3e-5, weight_decay=0.0, optimizer="adam", seed=1,
                               log_every=10**9, out_dir=None, progress=False)
    tr = sp.make_trainer(model, prm, image, base, n_batches, cfg, "cpu")  # the Trainer that `train` builds
    b = ds.get_batch(np.arange(batch))
    loss_fn, opt, params = tr.step_fn, tr.optimizer, tr.params
    losses = []
    def step():  # Trainer._train_step's work (zero_grad, loss, backward, grad norm, Adam) without its NaN guard, so a
        opt.zero_grad(set_to_none=True)  # non-finite gradient is counted (as on the reference side), not raised
        loss, _ = loss_fn(model, b, 150 * n_batches)  # mid-run epoch, as the reference driver (β does not change the work)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, math.inf)
        opt.step()
        losses.append(float(loss.detach()))
    for _ in range(2): step()
    t0, w0 = time.process_time(), time.perf_counter()
    for _ in range(steps): step()
    cpu, wall = time.process_time() - t0, time.perf_counter() - w0
    return {"tool": "cryonb", "D": D, "batch": batch, "segments": segments, "residues": int(base.n_res),
            "rotation_blend": prm["rotation_blend"], "img_per_cpu_s": batch * steps / cpu, "img_per_wall_s": batch * steps / wall,
            "peak_rss_MiB": _peak_rss_mib(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "loss_finite_steps": sum(v == v for v in losses), "steps_total": len(losses)}


def speed(sizes, batch, steps, segments, reference_python=None, root=None, lie=False, repeats=3):
    """cryonb and (with `reference_python`) the reference on the same files; prints JSON rows and a table."""
    root = Path(root or tempfile.mkdtemp(prefix="cryosphere_speed_"))
    rows = []
    for D in sizes:
        data, apix = _adk_data(root, D)
        # each side in its own process, so peak RSS is per tool
        cmd = [sys.executable, __file__, "cryonb", "--data", str(data), "--D", str(D), "--apix", str(apix), "--batch", str(batch),
               "--steps", str(steps), "--segments", str(segments)] + (["--lie"] if lie else [])
        mines, refs = [], []
        for _ in range(repeats):  # interleaved, median per side: the machine is shared
            mines.append(_run_json(cmd))
            if reference_python:
                from cryonb import datasets
                refs.append(_run_json([reference_python, __file__, "reference", "--data", str(data), "--D", str(D), "--apix", str(apix),
                                       "--pdb", str(datasets.adk_files()["closed"]), "--batch", str(batch), "--steps", str(steps),
                                       "--segments", str(segments)]))
        mine = _median_row(mines)
        ref = _median_row(refs) if refs else None
        row = {"D": D, "cryonb": mine, "reference": ref,
               "ratio_img_per_cpu_s": None if ref is None else mine["img_per_cpu_s"] / ref["img_per_cpu_s"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    print("\n| D | cryonb img/CPU-s | reference img/CPU-s | ratio | cryonb peak RSS | reference peak RSS | finite-loss steps cryonb / reference |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        m, f = r["cryonb"], r["reference"] or {}
        print(f"| {r['D']} | {m['img_per_cpu_s']:.0f} | {f.get('img_per_cpu_s', float('nan')):.0f} | "
              f"{(r['ratio_img_per_cpu_s'] or float('nan')):.2f}× | {m['peak_rss_MiB']:.0f} MiB | {f.get('peak_rss_MiB', float('nan')):.0f} MiB | "
              f"{m['loss_finite_steps']}/{m['steps_total']} / {f.get('loss_finite_steps', '-')}/{f.get('steps_total', '-')} |")
    return rows


def _median_row(rows):
    """The row with the median img/CPU-s, with every repeat's figure in `img_per_cpu_s_all`."""
    r = dict(sorted(rows, key=lambda r: r["img_per_cpu_s"])[len(rows) // 2])
    r["img_per_cpu_s_all"] = [round(x["img_per_cpu_s"], 1) for x in rows]
    return r


def _run_json(cmd):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [l for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (rc {p.returncode}):\n{p.stderr[-3000:]}")
    return json.loads(lines[-1])


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    r = sub.add_parser("reference", help="time the reference (run with its venv's python)")
    r.add_argument("--data", required=True, help="folder with particles.star (+ .mrcs) from `cryonb dataset adk`")
    r.add_argument("--D", type=int, required=True); r.add_argument("--apix", type=float, required=True)
    r.add_argument("--pdb", required=True, help="base structure (1AKE)")
    r.add_argument("--batch", type=int, default=32); r.add_argument("--steps", type=int, default=10)
    r.add_argument("--segments", type=int, default=20); r.add_argument("--light-clash", action="store_true")
    c = sub.add_parser("cryonb", help="time cryonb on one size (what `speed` runs in a subprocess)")
    c.add_argument("--data", required=True); c.add_argument("--D", type=int, required=True); c.add_argument("--apix", type=float, required=True)
    c.add_argument("--batch", type=int, default=32); c.add_argument("--steps", type=int, default=10)
    c.add_argument("--segments", type=int, default=20); c.add_argument("--lie", action="store_true")
    s = sub.add_parser("speed", help="both tools side by side")
    s.add_argument("--sizes", type=int, nargs="+", default=[64, 128]); s.add_argument("--batch", type=int, default=32)
    s.add_argument("--steps", type=int, default=10); s.add_argument("--segments", type=int, default=20)
    s.add_argument("--reference-python", default=None, help="python of a venv with cryosphere==0.6.1 (e.g. ../venvs/cryosphere/bin/python)")
    s.add_argument("--data-root", default=None); s.add_argument("--lie", action="store_true", help="cryonb: Lie-algebra blend")
    s.add_argument("--repeats", type=int, default=3, help="runs per side (interleaved); the median is reported")
    args = ap.parse_args()
    if args.mode == "speed":
        speed(args.sizes, args.batch, args.steps, args.segments, args.reference_python, args.data_root, args.lie, args.repeats)
    elif args.mode == "cryonb":
        print(json.dumps(cryonb_speed(args.data, args.D, args.apix, args.batch, args.steps, args.segments, args.lie)), flush=True)
    elif args.mode == "reference":
        reference(args.data, args.D, args.apix, args.batch, args.steps, args.segments, args.pdb, not args.light_clash)
