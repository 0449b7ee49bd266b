"""Back-projection throughput and peak memory: cryonb `Reconstructor.add` vs cryoDRGN `backproject_voxel`.

    python benchmarks/reconstruction.py [--sizes 64 128] [--n 2000] [--device cpu] [--threads 2]

Each configuration runs in a fresh subprocess, so the peak resident memory (`ru_maxrss`) and, on
CUDA, `torch.cuda.max_memory_allocated` belong to that configuration alone. cryonb's work per
batch: FFT of the images, CTF, phase shift, trilinear insertion of `CTF·Y` and `CTF²` into the two
half-set grids (oversampling 2, i.e. a (2D)³ grid, or 1). cryoDRGN's work per batch (its
`backproject_voxel` loop, called in-process, start-up and image loading not counted): CTF,
`coords @ rot`, `add_slice` into the full map and the two half-maps (its images are Hartley
transforms precomputed at load time, so it does *less* per image than we do). cryoDRGN is used
when `import cryodrgn` works (e.g. `../venv-cryodrgn/bin/python` after
`pip install -e . --no-deps`); otherwise its column is skipped. `finalize` (FSC-regularised
solve, 3 iterations) is timed separately. Memory is checked flat in N by running two N.

Measured 2026-11-21 on the shared 2-core CPU dev box (1 thread, heavily loaded by other jobs, so
±30 %), cryodrgn 4.3.1 in ../venv-cryodrgn, 1000 images, batch 250:

    D   oversampling  cryonb img/s  cryoDRGN img/s  ratio  peak RSS cryonb / cryoDRGN (MB)
    64  2 (default)   360-620       100-230         2.7-3.6x   650-760 / 540-600
    128 2 (default)   89-212        21-31           4.3-6.8x   2400-2500 / 1190
    64  1 (same grid) 2071          334             6.2x       474 / 593
    128 1 (same grid) 496           52              9.6x       884 / 1168

Peak memory is flat in N (1000 vs 2000 images within 5 %); at oversampling 2 it is set by the
(2D)^3 grids and the finalize FFTs. D = 256 (a 512^3 padded grid, ~10 GB at finalize) was not run
on this 23 GB shared machine; no GPU was available to this session.
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # the repo, when cryonb is not installed


def _one(kind: str, D: int, n: int, device: str, threads: int, batch: int, oversampling: int) -> dict:
    import numpy as np
    import torch
    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    imgs = torch.randn(batch, D, D, generator=g)
    from cryonb.geometry import random_rotations
    rots = random_rotations(batch, seed=1).float()
    ctfarr = np.tile(np.array([[D, 1.5, 15000, 14000, 30, 300, 2.7, 0.1, 0]], np.float32), (batch, 1))
    dev = torch.device(device)
    sync = (lambda: torch.cuda.synchronize()) if dev.type == "cuda" else (lambda: None)
    out = dict(kind=kind, D=D, n=n, device=device, threads=threads, batch=batch)
    if kind == "cryonb":
        from cryonb.ctf import CTFParams
        from cryonb.reconstruction import Reconstructor
        ctf, _, apix = CTFParams.from_cryodrgn(ctfarr)
        ctf = ctf.to(dev); imgs, rots = imgs.to(dev), rots.to(dev)
        shifts = torch.zeros(batch, 2, device=dev)
        hs = (torch.arange(batch, device=dev) % 2)
        rec = Reconstructor(D, apix, oversampling=oversampling, device=dev)
        rec.add(imgs[:8], rots[:8], shifts[:8], ctf[:8], hs[:8]); sync()       # warm-up
        t = time.perf_counter(); done = 0
        while done < n:
            rec.add(imgs, rots, shifts, ctf, hs); done += batch
        sync(); dt = time.perf_counter() - t
        t = time.perf_counter(); res = rec.finalize("fsc"); sync()
        out.update(images_per_s=done / dt, finalize_s=time.perf_counter() - t, oversampling=oversampling)
    else:
        from cryodrgn import ctf as dctf
        from cryodrgn.lattice import Lattice
        from cryodrgn.commands.backproject_voxel import add_slice
        Dl = D + 1                                     # cryoDRGN's symmetrised Hartley lattice is (D+1)²
        lat = Lattice(Dl, extent=Dl // 2, device=dev)
        mask = lat.get_circular_mask(Dl // 2)
        ffm = torch.randn(batch, int(mask.sum()), generator=g).to(dev)
        cp = torch.tensor(ctfarr[:, 1:], device=dev)
        rots = rots.to(dev)
        vols = [torch.zeros((Dl, Dl, Dl), device=dev) for _ in range(6)]
        def step():
            freqs = lat.freqs2d.unsqueeze(0).expand(batch, *lat.freqs2d.shape) / cp[:, 0].view(batch, 1, 1)
            c = dctf.compute_ctf(freqs, *torch.split(cp[:, 1:], 1, 1)).view(batch, -1)[:, mask]
            coord = lat.coords[mask] @ rots
            add_slice(vols[0], vols[1], coord, ffm, Dl, c)
            add_slice(vols[2], vols[3], coord[0::2], ffm[0::2], Dl, c[0::2])
            add_slice(vols[4], vols[5], coord[1::2], ffm[1::2], Dl, c[1::2])
        step(); sync()
        t = time.perf_counter(); done = 0
        while done < n:
            step(); done += batch
        sync(); dt = time.perf_counter() - t
        out.update(images_per_s=done / dt)
    out["peak_rss_MB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if dev.type == "cuda": out["peak_cuda_MB"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--n", type=int, default=2000, help="images per measurement")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--oversampling", type=int, default=2)
    ap.add_argument("--one", nargs=3, metavar=("KIND", "D", "N"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(_one(a.one[0], int(a.one[1]), int(a.one[2]), a.device, a.threads, a.batch, a.oversampling)))
        return
    try:
        import cryodrgn  # noqa: F401
        kinds = ["cryonb", "cryodrgn"]
    except ImportError:
        print("cryodrgn is not importable in this interpreter: its column is skipped", file=sys.stderr)
        kinds = ["cryonb"]
    rows = []
    for D in a.sizes:
        for kind in kinds:
            for n in ([a.n, 2 * a.n] if kind == "cryonb" else [a.n]):
                cmd = [sys.executable, __file__, "--one", kind, str(D), str(n), "--device", a.device,
                       "--threads", str(a.threads), "--batch", str(a.batch), "--oversampling", str(a.oversampling)]
                r = subprocess.run(cmd, capture_output=True, text=True)
                if r.returncode != 0:
                    print(f"{kind} D={D}: failed\n{r.stderr[-2000:]}", file=sys.stderr); continue
                rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{'D':>4} {'tool':>8} {'N':>6} {'images/s':>10} {'peak RSS MB':>12} {'finalize s':>10}")
    for r in rows:
        print(f"{r['D']:>4} {r['kind']:>8} {r['n']:>6} {r['images_per_s']:>10.0f} {r['peak_rss_MB']:>12.0f} "
              f"{r.get('finalize_s', float('nan')):>10.2f}")
    for D in a.sizes:
        ours = [r for r in rows if r["D"] == D and r["kind"] == "cryonb" and r["n"] == a.n]
        theirs = [r for r in rows if r["D"] == D and r["kind"] == "cryodrgn"]
        if ours and theirs:
            print(f"D={D}: cryonb / cryoDRGN back-projection throughput = {ours[0]['images_per_s'] / theirs[0]['images_per_s']:.1f}x")


if __name__ == "__main__":
    main()
