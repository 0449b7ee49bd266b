"""Throughput and peak memory of cryonb's forward model, and of the same work through cryoDRGN.

    python benchmarks/projection.py                          # D = 64 128 256 on the default device
    python benchmarks/projection.py --sizes 64 128 --threads 1
    ../venv-cryodrgn/bin/python benchmarks/projection.py  # also times cryoDRGN in the same process

Measured per box size D (float32, batches of --batch images, best of --repeats):
  prepare      prepare_volume (gridding correction, padding x2, 3-D FFT): once per map
  project      project_map(VolumeFT, poses): Fourier slice (Hermitian half-plane) + 2-D iFFT
  slice        project_ft(VolumeFT, poses): the Fourier slices only (what cryoDRGN's slicing does)
  gmm          render_gmm_2d of an N-bead Gaussian model (N = 214, the CA count of AdK, and 1656 atoms)
  backproject  backproject_images (exact adjoint of project_map, incl. the one 3-D iFFT)
  insert       insert_grid of complex slices (the scatter used by reconstruction); insert-herm its
               Hermitian half-plane fast path (the symmetrisation is a fixed cost, reported apart)
cryoDRGN (if `import cryodrgn` works), same D, poses and batch:
  drgn-slice   models_ai.VolumeExplicit.forward on lattice.coords @ R: cryoDRGN's slicing of an
               explicit (Hartley, (D+1)^3) volume with grid_sample (it copies the volume per image)
  gs-slice     the same grid_sample on ONE volume (no per-image copy): a tuned-baseline reference
  drgn-insert  backproject_voxel.add_slice: cryoDRGN's back-projection inner loop
Peak memory: torch.cuda.max_memory_allocated on CUDA; on CPU the peak resident-set growth during
the call (polled from /proc/self/statm every ms, with glibc returning freed blocks > 64 KiB to the
OS during that one call; approximate). Timings run with the allocator caching blocks (no page faults).
With --image-formation (AdK, 214 Cα beads from tests/data/adk_closed_1ake.pdb, σ = 2 Å, a 128 Å box
so apix = 128/D, batch --batch, CTF and shift applied) it compares instead the two Gaussian paths:
  render       render_gmm_2d: real-space images (no CTF)
  fft-path     fft2c(render_gmm_2d): image transforms through the forward FFT
  closed-form  render_gmm_2d_ft: the same transforms in closed form (no FFT)
  IF-real      ImageFormation(GaussianPotential(method="real")): render, FFT, CTF, shift, inverse FFT
  IF-fourier   ImageFormation(GaussianPotential(method="fourier")): closed form, CTF, shift, inverse FFT
  ...-per      the same with per-image models coords (B,N,3) (a decoder's output)
  ...-grad     forward + backward wrt the per-image coords (one training step's image model)
  ...-lp6      per-image models with a hard 6 Å low-pass (the closed form evaluates only that band)
No result is asserted: this is a report, not a test.
"""
from __future__ import annotations

import argparse
import gc
import os
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

import cryonb.projection as P


# ------------------------------------------------------------------ measurement helpers
def _libc():
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


_LIBC = _libc()
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _malloc_mode(measure_memory: bool):
    """glibc allocator settings. Timing: keep freed blocks up to 32 MiB in the heap for reuse (no
    page faults per call, as with the default dynamic threshold). Memory: return every block above
    64 KiB to the OS (after a trim), so that the resident-set growth during a call is its peak."""
    if _LIBC is None or not hasattr(_LIBC, "mallopt"):
        return
    if measure_memory:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 16)
        _LIBC.malloc_trim(0)
    else:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, 1 << 25)
        _LIBC.mallopt(_M_TRIM_THRESHOLD, 1 << 27)


class _RSSPeak:
    "Peak resident-set growth (bytes) of this process while the context is open (Linux /proc)."
    def __init__(self, interval=0.001):
        self.interval, self.peak, self._stop = interval, 0, threading.Event()
        self.page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def _rss(self):
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * self.page
        except OSError:
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss() - self.base)
            time.sleep(self.interval)

    def __enter__(self):
        gc.collect()
        self.base = self._rss()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set(); self._t.join()
        self.peak = max(self.peak, self._rss() - self.base)


def _sync(device):
    if device.type == "cuda": torch.cuda.synchronize()


def peak_memory(fn, device):
    "Peak extra memory (bytes) of one call of `fn`."
    if device.type == "cuda":
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        out = fn(); _sync(device)
        return torch.cuda.max_memory_allocated() - base
    _malloc_mode(True)
    try:
        with _RSSPeak() as m:
            out = fn()
        del out
    finally:
        _malloc_mode(False)
    return m.peak


def measure_all(fns, device, repeats=3):
    """Best wall time (s) of each callable in `fns` ({name: fn}), timed round-robin so that every
    function sees the same machine load (shared CPUs), and its peak extra memory."""
    for fn in fns.values(): fn(); _sync(device)                      # warm-up
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter(); out = fn(); _sync(device)
            best[k] = min(best[k], time.perf_counter() - t); del out
    return {k: (best[k], peak_memory(fn, device)) for k, fn in fns.items()}


def random_rotations(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=g))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.linalg.det(q).sign()[:, None, None]


def test_map(D, n=40, seed=0):
    "A smooth asymmetric map: n Gaussian blobs inside the central sphere (voxel units)."
    g = torch.Generator().manual_seed(seed)
    c = (torch.rand(n, 3, generator=g) - 0.5) * D * 0.5
    return P.render_gmm_3d(c, torch.rand(n, generator=g) + 0.5, D / 20, D, 1.0)


def fmt(label, D, B, t, peak, extra=""):
    print(f"  {label:<19} D={D:<4} B={B:<5} {B / t:>10.1f} img/s   peak {peak / 2**20:>8.1f} MiB  {extra}", flush=True)
    return B / t


# ------------------------------------------------------------------ cryoDRGN
def cryodrgn_available():
    try:
        import cryodrgn  # noqa: F401
        from cryodrgn.models_ai import VolumeExplicit  # noqa: F401
        from cryodrgn.lattice import Lattice  # noqa: F401
        from cryodrgn.commands.backproject_voxel import add_slice  # noqa: F401
        return True
    except Exception as e:  # noqa: BLE001 - any import failure means "not available"
        print(f"cryoDRGN not importable ({type(e).__name__}: {e}); run with ../venv-cryodrgn/bin/python "
              "to compare in the same process.")
        return False


def cryodrgn_callables(D, vol, R, device, mem_cap=2**30):
    """cryoDRGN's slicing (VolumeExplicit) and back-projection (add_slice) at the same D and poses:
    {name: (fn, batch, note)}."""
    import cryodrgn
    from cryodrgn import fft as dfft
    from cryodrgn.models_ai import VolumeExplicit
    from cryodrgn.lattice import Lattice
    from cryodrgn.commands.backproject_voxel import add_slice
    B = R.shape[0]
    ht = dfft.htn_center(vol.float())                                        # (D,D,D) Hartley
    ht = torch.nn.functional.pad(ht[None, None], (0, 1, 0, 1, 0, 1), mode="circular")[0, 0]  # (D+1)^3, as symmetrize_ht
    model = VolumeExplicit(D + 1, "hartley", 0.5).to(device)
    with torch.no_grad():
        model.volume.copy_(ht.to(device))
    lat = Lattice(D + 1, extent=0.5, device=device)
    Bd = int(max(1, min(B, mem_cap // (4 * (D + 1) ** 3))))   # it copies the volume per image
    x = lat.coords @ R[:Bd].to(device)
    xs = lat.coords @ R.to(device)
    grid = (xs * 2)[None, :, None]                              # (1,B,1,N,3) in [-1,1]
    v5 = model.volume.detach()[None, None]
    blat = Lattice(D + 1, extent=D // 2, device=device)
    mask = blat.get_circular_mask(D // 2)
    coord = blat.coords[mask]
    ff = torch.randn(B, int(mask.sum()), device=device)
    ctf_mul = torch.ones_like(ff)
    volume = torch.zeros((D + 1,) * 3, device=device)
    counts = torch.zeros((D + 1,) * 3, device=device)
    Rd = R.to(device)

    def drgn_insert():
        volume.zero_(); counts.zero_()
        add_slice(volume, counts, coord @ Rd, ff, D + 1, ctf_mul)
        return volume
    v = cryodrgn.__version__
    return {"drgn-slice": (lambda: model(x, None), Bd, f"(cryodrgn {v} VolumeExplicit.forward; copies the volume per image)"),
            "gs-slice": (lambda: torch.nn.functional.grid_sample(v5, grid, mode="bilinear", align_corners=False), B,
                         "(grid_sample on ONE real (D+1)^3 Hartley grid, no oversampling: reference)"),
            "drgn-insert": (drgn_insert, B, f"(cryodrgn {v} backproject_voxel.add_slice: values + CTF^2 weights)")}


# ------------------------------------------------------------------ cryonb
def bench(D, B, device, repeats, with_drgn):
    print(f"D = {D}", flush=True)
    vol = test_map(D)
    R = random_rotations(B, D)
    vol_d, R_d = vol.to(device), R.to(device)
    t = time.perf_counter(); vf = P.prepare_volume(vol_d); _sync(device); t = time.perf_counter() - t
    peak = peak_memory(lambda: P.prepare_volume(vol_d), device)
    print(f"  {'prepare':<12} D={D:<4}         {t * 1e3:>10.1f} ms per map  peak {peak / 2**20:>8.1f} MiB  (gridding correction, pad x2, 3-D FFT)", flush=True)
    imgs = P.project_map(vf, R_d)
    ft = P.fft2c(imgs.to(torch.complex64))
    beads = {}
    for N, sig in ((214, 2.0), (1656, 1.5)):
        g = torch.Generator().manual_seed(N)
        beads[N] = (((torch.rand(N, 3, generator=g) - 0.5) * D * 0.5).to(device), torch.ones(N, device=device), sig)
    fns = {"project": (lambda: P.project_map(vf, R_d), B, "(map: Fourier slice + 2-D iFFT -> real images)"),
           "slice": (lambda: P.project_ft(vf, R_d), B, "(map: the Fourier slices only)"),
           "gmm214": (lambda: P.render_gmm_2d(*beads[214][:2], beads[214][2], R_d, D, 1.0), B, "(Gaussian model, 214 beads = AdK CA, analytic)"),
           "gmm1656": (lambda: P.render_gmm_2d(*beads[1656][:2], beads[1656][2], R_d, D, 1.0), B, "(Gaussian model, 1656 beads = AdK atoms)"),
           "backproject": (lambda: P.backproject_images(imgs, R_d), B, "(exact adjoint of project, incl. the 3-D iFFT)"),
           "insert": (lambda: P.insert_grid(ft, R_d, 2 * D), B, "(insert_grid, full complex plane, M=2D grid)"),
           "insert-herm": (lambda: P.insert_grid(ft, R_d, 2 * D, hermitian=True), B,
                           "(insert_grid hermitian=True; + one hermitian_symmetrize per reconstruction)")}
    if with_drgn:
        fns.update(cryodrgn_callables(D, vol, R, device))
    res = measure_all({k: v[0] for k, v in fns.items()}, device, repeats)
    rate = {}
    for k, (fn, b, note) in fns.items():
        t, peak = res[k]
        rate[k] = fmt(k, D, b, t, peak, note)
    grid = P.insert_grid(ft, R_d, 2 * D, hermitian=True)
    fixed = measure_all({"sym": lambda: P.hermitian_symmetrize(grid), "g2v": lambda: P.grid_to_volume(grid, D)}, device, repeats)
    print(f"  fixed costs per reconstruction/back-projection: hermitian_symmetrize {fixed['sym'][0] * 1e3:.0f} ms, "
          f"grid_to_volume (3-D iFFT, crop, correction) {fixed['g2v'][0] * 1e3:.0f} ms", flush=True)
    imgs4, R4 = imgs.repeat(4, 1, 1), R_d.repeat(4, 1, 1)
    t4 = measure_all({"bp4": lambda: P.backproject_images(imgs4, R4)}, device, 1)["bp4"][0]
    fmt("backproject", D, 4 * B, t4, 0, "(4x the images: the 3-D iFFT amortised)")
    print(f"  memory flat in B: backproject peak {peak_memory(lambda: P.backproject_images(imgs, R_d), device) / 2**20:.1f} MiB "
          f"at B={B}, {peak_memory(lambda: P.backproject_images(imgs4, R4), device) / 2**20:.1f} MiB at B={4 * B}")
    if with_drgn:
        print(f"  RATIO slice / cryoDRGN slicing = {rate['slice'] / rate['drgn-slice']:.1f}x "
              f"(project incl. iFFT {rate['project'] / rate['drgn-slice']:.1f}x; "
              f"vs one-grid grid_sample reference {rate['slice'] / rate['gs-slice']:.2f}x)")
        print(f"  RATIO backproject / cryoDRGN add_slice = {rate['backproject'] / rate['drgn-insert']:.1f}x "
              f"(insert_grid {rate['insert'] / rate['drgn-insert']:.1f}x, hermitian {rate['insert-herm'] / rate['drgn-insert']:.1f}x)",
              flush=True)
    return rate


def bench_image_formation(D, B, device, repeats):
    "The two Gaussian image-formation paths (real-space render + FFT vs closed form) on AdK."
    from cryonb.structure import from_pdb, center_coords
    from cryonb.ctf import CTFParams
    cg = from_pdb(Path(__file__).resolve().parents[1] / "tests" / "data" / "adk_closed_1ake.pdb", model=0)
    coords, _ = center_coords(cg.coords[0], cg.amplitudes)
    coords, amps = coords.to(device), cg.amplitudes.to(device)
    N, apix = coords.shape[0], 128.0 / D
    R = random_rotations(B, D).to(device)
    g = torch.Generator().manual_seed(D)
    per = coords + torch.randn(B, N, 3, generator=g).to(device)
    shifts = (torch.rand(B, 2, generator=g) * 6 - 3).to(device)
    ctf = CTFParams(*[torch.full((B,), v) for v in (15000.0, 14000.0, 30.0, 300.0, 2.7, 0.1)]).to(device)
    f_real = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, cg.sigma, "real")).to(device)
    f_four = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, cg.sigma, "fourier")).to(device)
    lp_real = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, cg.sigma, "real"), lowpass_A=6.0)
    lp_four = P.ImageFormation(D, apix, P.GaussianPotential(coords, amps, cg.sigma, "fourier"), lowpass_A=6.0)
    lp_real, lp_four = lp_real.to(device), lp_four.to(device)

    def step(f):
        def run():
            with torch.enable_grad():
                c = per.clone().requires_grad_()
                f(R, shifts, ctf, coords=c).square().sum().backward()
                return c.grad
        return run
    fns = {"render": lambda: P.render_gmm_2d(coords, amps, cg.sigma, R, D, apix),
           "fft-path": lambda: P.fft2c(P.render_gmm_2d(coords, amps, cg.sigma, R, D, apix)),
           "closed-form": lambda: P.render_gmm_2d_ft(coords, amps, cg.sigma, R, D, apix),
           "IF-real": lambda: f_real(R, shifts, ctf),
           "IF-fourier": lambda: f_four(R, shifts, ctf),
           "IF-real-per": lambda: f_real(R, shifts, ctf, coords=per),
           "IF-fourier-per": lambda: f_four(R, shifts, ctf, coords=per),
           "IF-real-grad": step(f_real),
           "IF-fourier-grad": step(f_four),
           "IF-real-lp6": lambda: lp_real(R, shifts, ctf, coords=per),
           "IF-fourier-lp6": lambda: lp_four(R, shifts, ctf, coords=per),
           "IF-real-lp6-grad": step(lp_real),
           "IF-fourier-lp6-grad": step(lp_four)}
    print(f"D = {D} (apix {apix:g} Å, AdK {N} Cα beads, σ = {cg.sigma} Å)", flush=True)
    res = measure_all(fns, device, repeats)
    rate = {k: fmt(k, D, B, *res[k]) for k in fns}
    a, b = f_real(R, shifts, ctf), f_four(R, shifts, ctf)
    print(f"  RATIO closed-form / fft-path = {rate['closed-form'] / rate['fft-path']:.2f}x; "
          f"IF fourier / real = {rate['IF-fourier'] / rate['IF-real']:.2f}x (per-image "
          f"{rate['IF-fourier-per'] / rate['IF-real-per']:.2f}x, "
          f"with backward {rate['IF-fourier-grad'] / rate['IF-real-grad']:.2f}x); "
          f"images differ by {float((a - b).norm() / b.norm()):.1e} (relative L2)", flush=True)
    print(f"  RATIO with a 6 Å low-pass (band {lp_four.band_px} of {D // 2} Fourier px): fourier / real = "
          f"{rate['IF-fourier-lp6'] / rate['IF-real-lp6']:.2f}x, with backward "
          f"{rate['IF-fourier-lp6-grad'] / rate['IF-real-lp6-grad']:.2f}x", flush=True)
    return rate


def main(argv=None):
    ap = argparse.ArgumentParser(prog="benchmarks/projection.py", description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256])
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-cryodrgn", action="store_true")
    ap.add_argument("--image-formation", action="store_true",
                    help="compare the real-space and closed-form Gaussian image-formation paths (AdK) instead")
    a = ap.parse_args(argv)
    if a.threads: torch.set_num_threads(a.threads)
    _malloc_mode(False)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"cryonb projection benchmark: torch {torch.__version__}, {name}, float32, batch {a.batch}")
    if a.image_formation:
        with torch.no_grad():
            for D in a.sizes:
                bench_image_formation(D, a.batch, device, a.repeats)
        return 0
    with_drgn = (not a.no_cryodrgn) and cryodrgn_available()
    with torch.no_grad():
        for D in a.sizes:
            bench(D, a.batch, device, a.repeats, with_drgn)
    return 0


if __name__ == "__main__":
    sys.exit(main())
