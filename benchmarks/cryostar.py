"""cryoSTAR training-step speed, cryonb next to the reference (bytedance/cryostar) in the same run.

    python benchmarks/cryostar.py [--sizes 64 128] [--batch 32] [--steps 10] [--data DIR]
        [--reference-src CHECKOUT --reference-python VENV/bin/python] [--device cpu|cuda] [--amp]

Images per CPU-second of one training step of the atom generator (forward, restraints, backward, AdamW) at
batch 32 with one thread, and the peak resident memory, on the same data for both sides: an AdK closed→open
dataset from `cryonb.datasets.make_adk_dataset` (10 states × 100 images, SNR 0.1; D = 64 at 2 Å/px, D = 128
at 1 Å/px: a 128 Å box; made under `--data` if absent) with the 1AKE crystal structure (214 residues) as the
reference model. Each (side, D) runs in its own subprocess with OMP_NUM_THREADS=1, so the peak RSS is that
side's alone. Batches are read before the clock starts; CPU time (`time.process_time`) of `--steps` steps after
2 warm-up steps is counted.

The reference is not on PyPI: `--reference-src` is a checkout of bytedance/cryostar (Apache-2.0) and
`--reference-python` the interpreter of a venv where its dependencies are installed (it needs `biotite<1.0`;
see benchmarks/README.md). Its side builds the reference's own `StarfileDataSet`, `CryoEMTask` (from
`projects/star/train_atom.py`, config `atom_configs/1ake.py`) and `configure_optimizers()`, and calls its
`training_step` outside Lightning (one process: `all_gather` is the identity), then backward and the optimiser
step. Nothing of the reference is copied here. The AdK evaluation is `benchmarks/cryostar_adk.py`.
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path
import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ISSUE_REF = {64: 414, 128: 114}          # img/CPU-s the issue's author measured for the reference


def _status_mib(key):
    "A /proc/self/status memory field (MiB), None where there is no /proc."
    try:
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"): return int(line.split()[1]) / 1024
    except OSError:
        return None


def _rss_mib(): return _status_mib("VmRSS")


def _peak_mib():
    """Peak resident set of this process (MiB): VmHWM, which starts anew at exec (`ru_maxrss` does not: a child
    forked from a big parent reports the parent's peak)."""
    v = _status_mib("VmHWM")
    return v if v is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _time_steps(step, batches, warmup, device):
    "Run `step(batch)` on `warmup` then the remaining batches; CPU and wall seconds of the timed part."
    for b in batches[:warmup]: step(b)
    if device.type == "cuda": torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    rss0 = _rss_mib()
    t0, w0 = time.process_time(), time.perf_counter()
    for b in batches[warmup:]: step(b)
    if device.type == "cuda": torch.cuda.synchronize()
    return time.process_time() - t0, time.perf_counter() - w0, rss0


def ensure_adk(data, D):
    "The AdK dataset of box `D` under `data` (made if absent); returns its particles.star."
    folder = Path(data) / f"adk{D}"
    star = folder / "particles.star"
    if not star.exists():
        from cryonb import datasets
        datasets.make_adk_dataset(folder, states=10, images_per_state=100, D=D, apix=2.0 if D == 64 else 1.0,
                                  snr=0.1, seed=0)
    return star


def step_cryonb(star, batch, steps, device="cpu", amp=False, warmup=2):
    """cryonb's side: the training step of `cryonb cryostar train-atom` (`atom_step_fn`: image loss on the
    low-passed target, restraints, KL) + backward + the method's AdamW, on batches of `ParticleDataset.get_batch`."""
    from cryonb import datasets, structure
    from cryonb.data import ParticleDataset
    from cryonb.methods import cryostar as cs
    dev = torch.device(device)
    ref = structure.from_pdb(datasets.adk_files()["closed"], model=0)
    ds = ParticleDataset(star)
    D, apix = ds.D, float(ds.apix)
    cfg = cs.load_config(None, [f"data_loader.train_batch_per_gpu={batch}", "do_ref_init=False"])
    torch.manual_seed(int(cfg["seed"]))
    model = cs.build_atom_model(cfg, ref, D, apix).to(dev).train()
    step_fn = cs.atom_step_fn(cfg, cs.make_restraints(cfg, ref, dev), D, apix, dev)
    opt = cs.make_optimizer(model.parameters(), cfg["optimizer"]["lr"])
    g = np.random.default_rng(0)
    batches = [{k: (v.to(dev) if hasattr(v, "to") else v) for k, v in ds.get_batch(np.sort(g.choice(len(ds), batch, replace=False))).items()}
               for _ in range(warmup + steps)]

    def step(b):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            loss, _ = step_fn(model, b, 100)
        opt.zero_grad(); loss.backward(); opt.step()
    cpu, wall, rss0 = _time_steps(step, batches, warmup, dev)
    return {"side": "cryonb", "D": D, "apix": apix, "batch": batch, "steps": steps, "device": str(dev),
            "amp_bf16": amp, "img_per_cpu_s": batch * steps / cpu, "img_per_wall_s": batch * steps / wall,
            "rss_before_steps_MiB": rss0, "peak_rss_MiB": _peak_mib(),
            "cuda_peak_MiB": torch.cuda.max_memory_allocated() / 2**20 if dev.type == "cuda" else None}


def _stub_torchvision():
    """The reference imports torchvision for image resizing and PNG grids only (not used by a training step); the
    PyPI torchvision wheels are built against CUDA torch and do not load with the CPU build, so empty modules stand in.
    Lightning and torchmetrics are imported first so that they see no torchvision."""
    import types
    import lightning.pytorch, torchmetrics  # noqa: F401
    mods = {n: types.ModuleType(n) for n in ("torchvision", "torchvision.transforms",
                                              "torchvision.transforms.functional", "torchvision.utils")}
    mods["torchvision"].transforms, mods["torchvision"].utils = mods["torchvision.transforms"], mods["torchvision.utils"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    mods["torchvision.transforms"].ToPILImage = mods["torchvision.utils"].make_grid = None
    sys.modules.update(mods)


def step_reference(src, star, pdb, batch, steps, warmup=2):
    "The reference's side: its `CryoEMTask.training_step` (1ake config) + backward + its `configure_optimizers()`."
    import tempfile, types
    src = Path(src).resolve()
    sys.path[:0] = [str(src), str(src / "projects" / "star")]
    _stub_torchvision()
    import train_atom
    from mmengine import Config
    from torch.utils.data import DataLoader
    from cryostar.utils.dataio import StarfileDataSet, StarfileDatasetConfig
    cfg = Config.fromfile(str(src / "projects" / "star" / "atom_configs" / "1ake.py"))
    star = Path(star).resolve()
    ds = StarfileDataSet(StarfileDatasetConfig(dataset_dir=str(star.parent), starfile_path=str(star), apix=None,
                                               side_shape=None, down_side_shape=None, mask_rad=1.0, power_images=1.0,
                                               ignore_rots=False, ignore_trans=False))
    cfg.dataset_attr.dataset_dir, cfg.dataset_attr.starfile_path = str(star.parent), str(star)
    cfg.dataset_attr.apix, cfg.dataset_attr.side_shape, cfg.dataset_attr.ref_pdb_path = ds.apix, ds.side_shape, str(pdb)
    cfg.data_process.down_side_shape = ds.down_side_shape
    cfg.data_process["down_apix"] = ds.apix
    cfg.data_loader.train_batch_per_gpu = batch
    cfg.work_dir = tempfile.mkdtemp(prefix="cryostar_ref_")
    torch.manual_seed(1)
    task = train_atom.CryoEMTask(cfg, ds)
    task.all_gather = lambda x: x                                          # one process: gathering is the identity
    task.log_dict = lambda *a, **k: None
    # outside Lightning: a stand-in for the attributes its step reads from the trainer (step 1: not a logging step)
    task._trainer = types.SimpleNamespace(global_step=1, current_epoch=0, num_training_batches=len(ds) // batch)
    opt = task.configure_optimizers()
    task.train()
    loader = DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
                        generator=torch.Generator().manual_seed(0))
    it, batches = iter(loader), []
    while len(batches) < warmup + steps:
        try: batches.append(next(it))
        except StopIteration: it = iter(loader)

    def step(b):
        loss = task.training_step(b, 0)
        opt.zero_grad(); loss.backward(); opt.step()
    cpu, wall, rss0 = _time_steps(step, batches, warmup, torch.device("cpu"))
    return {"side": "reference", "D": int(ds.down_side_shape), "apix": float(ds.apix), "batch": batch, "steps": steps,
            "device": "cpu", "n_beads": int(task.gmm_centers.shape[0]), "img_per_cpu_s": batch * steps / cpu,
            "img_per_wall_s": batch * steps / wall, "rss_before_steps_MiB": rss0, "peak_rss_MiB": _peak_mib()}


def _run(cmd, env):
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    rows = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
    if p.returncode or not rows:
        sys.stderr.write(p.stderr[-3000:])
        return None
    return rows[-1]


def speed(sizes, batch, steps, data, reference_src=None, reference_python=None, device="cpu", amp=False):
    "Both sides at each D, each in its own one-thread subprocess; prints one JSON line per run and a table."
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env_ours = {**env, "PYTHONPATH": os.pathsep.join([str(HERE.parent), env.get("PYTHONPATH", "")])}
    from cryonb import datasets
    pdb = datasets.adk_files()["closed"]
    table = []
    for D in sizes:
        star = ensure_adk(data, D)
        base = ["--star", str(star), "--batch", str(batch), "--steps", str(steps)]
        ours = _run([sys.executable, __file__, "_step", "--side", "cryonb", "--device", device] + (["--amp"] if amp else []) + base, env_ours)
        print(json.dumps(ours), flush=True)
        ref = None
        if reference_src:
            ref = _run([reference_python or sys.executable, __file__, "_step", "--side", "reference",
                        "--reference-src", str(reference_src), "--pdb", str(pdb)] + base, env)
            print(json.dumps(ref), flush=True)
        table.append((D, ours, ref))
    print("\n| D | cryonb img/CPU-s | reference img/CPU-s (same run) | ratio | issue's reference figure "
          "| cryonb peak RSS (growth in steps) | reference peak RSS (growth in steps) |")
    print("|---|---|---|---|---|---|---|")
    mem = lambda r: "–" if r is None else f"{r['peak_rss_MiB']:.0f} MiB ({r['peak_rss_MiB'] - r['rss_before_steps_MiB']:+.0f})"
    f = lambda r, k, fmt: "–" if r is None else format(r[k], fmt)
    for D, o, r in table:
        ratio = "–" if (o is None or r is None) else f"{o['img_per_cpu_s'] / r['img_per_cpu_s']:.2f}×"
        print(f"| {D} | {f(o, 'img_per_cpu_s', '.0f')} | {f(r, 'img_per_cpu_s', '.0f')} | {ratio} | {ISSUE_REF.get(D, '–')} "
              f"| {mem(o)} | {mem(r)} |")
    return table


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", nargs="?", default="speed", choices=["speed", "_step"],
                    help="speed (default); _step: one side at one D (what speed runs in a subprocess)")
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--data", default="cryostar_speed_data", help="folder for the AdK datasets (made if absent)")
    ap.add_argument("--reference-src", default=None, help="checkout of bytedance/cryostar")
    ap.add_argument("--reference-python", default=None, help="python of the venv with the reference's dependencies")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="bfloat16 autocast (cryonb side)")
    ap.add_argument("--side", choices=["cryonb", "reference"]); ap.add_argument("--star"); ap.add_argument("--pdb")
    a = ap.parse_args()
    if a.mode == "speed":
        speed(a.sizes, a.batch, a.steps, a.data, a.reference_src, a.reference_python, a.device, a.amp)
    else:
        torch.set_num_threads(1)
        r = (step_cryonb(a.star, a.batch, a.steps, a.device, a.amp) if a.side == "cryonb"
             else step_reference(a.reference_src, a.star, a.pdb, a.batch, a.steps))
        print(json.dumps(r), flush=True)
