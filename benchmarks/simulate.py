"""Benchmark of `cryonb.simulate.simulate_dataset` at D = 128, streaming to disk.

Reports images/s and the peak resident memory (ru_maxrss) of a fresh process for several dataset
sizes N. If the stack were held in memory, peak memory would grow by N·D²·4 bytes (65 kB per image
at D = 128: +196 MB from N = 1000 to 4000); streaming keeps it flat.

    OMP_NUM_THREADS=2 python benchmarks/simulate.py                 # CPU, N = 1000, 4000
    python benchmarks/simulate.py --n 10000 100000 --device cuda      # GPU, CryoBench scale
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path


def run_one(n, D, apix, states, device, chunk, out):
    import torch
    from cryonb.datasets import adk_states
    from cryonb.simulate import simulate_dataset
    atoms, _ = adk_states(states)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    ds = simulate_dataset([atoms], out, n_per_state=n // states, D=D, apix=apix, snr=0.01, seed=0,
                          max_shift_px=4, bfactor=50.0, chunk_size=chunk, images_per_file=50_000, device=device)
    if device and str(device).startswith("cuda"): torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    gpu = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    size = sum(p.stat().st_size for p in ds.stacks) / 2**20
    return dict(n=ds.n_images, D=D, seconds=round(dt, 2), images_per_s=round(ds.n_images / dt, 1),
                peak_rss_MB=round(peak, 1), rss_before_MB=round(base, 1), gpu_peak_MB=None if gpu is None else round(gpu, 1),
                stack_MB=round(size, 1), device=str(device))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, nargs="+", default=[1000, 4000])
    p.add_argument("-D", type=int, default=128)
    p.add_argument("--apix", type=float, default=1.0)
    p.add_argument("--states", type=int, default=10)
    p.add_argument("--chunk-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--outdir", default=None, help="where to write (default: a temporary folder, deleted)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print(json.dumps(run_one(a.n[0], a.D, a.apix, a.states, a.device, a.chunk_size, a.outdir))); return
    rows = []
    with tempfile.TemporaryDirectory(dir=a.outdir) as td:
        for n in a.n:                      # one fresh process per N, so ru_maxrss is that run's peak
            cmd = [sys.executable, __file__, "--child", "--n", str(n), "-D", str(a.D), "--apix", str(a.apix),
                   "--states", str(a.states), "--chunk-size", str(a.chunk_size), "--device", a.device,
                   "--outdir", str(Path(td) / f"n{n}")]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode: print(r.stderr, file=sys.stderr); sys.exit(r.returncode)
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]))
    if len(rows) > 1:
        d = rows[-1]["peak_rss_MB"] - rows[0]["peak_rss_MB"]
        held = (rows[-1]["n"] - rows[0]["n"]) * a.D * a.D * 4 / 2**20
        print(f"peak RSS grew {d:+.0f} MB from N={rows[0]['n']} to N={rows[-1]['n']} "
              f"(holding the stack would add {held:.0f} MB)")


if __name__ == "__main__":
    main()
