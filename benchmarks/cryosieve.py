"""Throughput of the CryoSieve core (`cryonb sieve-core`): particles per second at D = 128 and 160.

    python benchmarks/cryosieve.py [--sizes 128 160] [--n 512] [--devices cpu cuda] [--precision double single]

Synthetic particles (analytic Gaussian-blob structure, RELION CTF, shifts, noise; `blob_dataset`) are
written to a memory-mapped .mrcs in a temporary folder, then `sieve_core` (read star + maps, score every
particle against its half-map, select, write both star files) is timed after one warm-up run. Scoring
alone (`score_particles`) is timed on N/4 and N particles: `steady p/s` is the per-particle throughput once the
half-map is prepared, `map prep s` the fixed cost (gridding correction, 2× padding, one 3-D FFT per distinct
map); `core s`/`core p/s` are the whole `sieve_core` run on N particles. CUDA rows appear when a GPU is present.

The reference `cryosieve-core` (mxhulab/cryosieve 1.3.3) runs only on CUDA GPUs: its kernels are CuPy
RawKernels and it calls `cupy.cuda.runtime.getDeviceCount()` before reading any input, so there is no CPU
reference to compare with. When a GPU is present and `cryosieve-core` is on PATH, it is run on the same
files (`--angpix`, one GPU) for a side-by-side ratio.
"""
import argparse, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
import torch

from cryonb.methods import cryosieve as cs
from cryonb import synthetic


def bench(D, n, device, precision, batch_size, workdir):
    d = workdir / f"D{D}"
    if not (d / "particles.star").exists():
        synthetic.blob_dataset(d, n=n, D=D, apix=1.32, junk_fraction=0.2, noise_sigma=3.0, seed=0, n_blobs=60)
    maps = [str(d / "map.mrc")] * 2
    parts = cs.SieveParticles(d / "particles.star")
    vol = cs.load_map(d / "map.mrc")[0]; mask = cs.load_map(d / "mask.mrc")[0]
    kw = dict(device=device, precision=precision, batch_size=batch_size)
    cs.score_particles(parts, [vol, vol], 40.0, mask=mask, rows=np.arange(min(n, 2 * batch_size)), **kw)   # warm-up
    sync = (lambda: torch.cuda.synchronize()) if str(device).startswith("cuda") else (lambda: None)
    n_small = n // 4
    sync(); t = time.perf_counter()
    cs.score_particles(parts, [vol, vol], 40.0, mask=mask, rows=np.arange(n_small), **kw); sync()
    t_small = time.perf_counter() - t
    sync(); t = time.perf_counter()
    cs.score_particles(parts, [vol, vol], 40.0, mask=mask, **kw); sync()
    t_score = time.perf_counter() - t
    steady = (n - n_small) / max(t_score - t_small, 1e-9)      # particles/s once the map is prepared
    fixed = max(t_score - n / steady, 0.0)                     # map preparation (gridding, 2x pad, 3-D FFT)
    t = time.perf_counter()
    cs.sieve_core(d / "particles.star", d / "out.star", maps, 40.0, mask=str(d / "mask.mrc"), verbose=False, **kw); sync()
    t_core = time.perf_counter() - t
    return dict(D=D, device=str(device), precision=precision, n=n, score_s=t_score, core_s=t_core,
                score_pps=n / t_score, core_pps=n / t_core, steady_pps=steady, fixed_s=fixed)


def reference(D, workdir):
    exe = shutil.which("cryosieve-core")
    if exe is None or not torch.cuda.is_available(): return None
    d = workdir / f"D{D}"
    t = time.perf_counter()
    r = subprocess.run([exe, "--i", "particles.star", "--o", "ref.star", "--angpix", "1.32", "--volume", "map.mrc", "--volume", "map.mrc",
                        "--mask", "mask.mrc", "--retention_ratio", "0.8", "--frequency", "40"], cwd=d, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode: print(f"reference cryosieve-core failed: {r.stderr[-500:]}"); return None
    import starfile
    ours = set(starfile.read(d / "out.star")["particles"]["rlnImageName"]); ref = set(starfile.read(d / "ref.star")["particles"]["rlnImageName"])
    return dict(seconds=dt, overlap=len(ours & ref) / max(len(ref), 1))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[128, 160])
    p.add_argument("--n", type=int, default=512, help="particles per size")
    p.add_argument("--devices", nargs="+", default=None, help="default: cpu, and cuda when available")
    p.add_argument("--precision", nargs="+", default=["double", "single"])
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--workdir", default=None)
    a = p.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    devices = a.devices or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    work = Path(a.workdir or tempfile.mkdtemp(prefix="cryosieve_bench_"))
    print(f"cryonb sieve-core throughput; torch {torch.__version__}, CPU threads {torch.get_num_threads()}, "
          f"GPU {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'}")
    print(f"{'D':>4} {'device':>6} {'precision':>9} {'N':>6} {'map prep s':>10} {'steady p/s':>10} {'core s':>7} {'core p/s':>9}")
    for D in a.sizes:
        for dev in devices:
            for prec in a.precision:
                r = bench(D, a.n, dev, prec, a.batch_size, work)
                print(f"{D:>4} {r['device']:>6} {prec:>9} {a.n:>6} {r['fixed_s']:>10.2f} {r['steady_pps']:>10.0f} {r['core_s']:>7.2f} {r['core_pps']:>9.0f}", flush=True)
        ref = reference(D, work)
        if ref is None:
            print(f"{D:>4} reference cryosieve-core: not run (it requires a CUDA GPU and CuPy; "
                  f"{'no GPU here' if not torch.cuda.is_available() else 'not installed'})")
        else:
            print(f"{D:>4} reference cryosieve-core (1 GPU): {ref['seconds']:.2f} s = {a.n / ref['seconds']:.0f} p/s (incl. start-up); "
                  f"kept-set overlap with cryonb {ref['overlap']:.3f}")
    if a.workdir is None: shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
