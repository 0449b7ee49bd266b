"""cryoSPHERE on AdK closed→open: segmentation vs the known domains, per-image Cα RMSD, per-conformation AUC.

    python benchmarks/cryosphere_adk.py [--D 64] [--states 10] [--per-state 100] [--snr 0.1] [--steps 1500]
                                        [--batch 64] [--segments 4] [--methods cryosphere cryostar] [--out DIR]

Data: `cryonb.datasets.make_adk_dataset` (the DIMS closed→open path of E. coli adenylate kinase, 214
residues, `--states` frames × `--per-state` images, D = 64, 1.5 Å/px, CTF, `--snr`), ground-truth frames
in `gt_models.pdb` and maps in `gt_maps/`. Every method starts from the 1AKE crystal structure (the
closed state) and gets the same data and the same step budget (`--steps` optimizer steps of `--batch`
images, one thread unless OMP_NUM_THREADS says otherwise).

Printed per method, next to the unmoved 1AKE baseline:
- **segmentation** (cryoSPHERE only): the deterministic posterior-mean segmentation (hard argmax) against
  the AdK domains in 1AKE numbering, CORE = 1–29, 60–121, 160–214; NMP (AMP-binding) = 30–59;
  LID (ATP-binding) = 122–159, the definition of Beckstein et al., J. Mol. Biol. 394:160–176 (2009),
  also used by the MDAnalysis AdK tutorials. Figures: adjusted Rand index of segments vs domains;
  purity (each segment labelled by its majority domain, fraction of residues whose segment's label is
  their own domain); per domain the Jaccard index of the union of segments labelled with it; the segment
  boundaries found next to the literature boundaries 29|30, 59|60, 121|122, 159|160.
- **per-image Cα RMSD**: each image's decoded structure against its own ground-truth frame after
  Kabsch superposition (`structure.kabsch_rmsd`); median overall and per state.
- **per-conformation AUC** (CryoBench protocol, `cryobench.evaluate(decode=…)`): per state the mean latent,
  snapped to the nearest image latent, decoded and rendered as a Gaussian map (`atomic_vae.decode_map`,
  = `structure-to-volume`), FSC-AUC against the state's ground-truth map. The **ceiling** renders each
  state's ground-truth Cα frame the same way: no Cα-Gaussian model can score higher against those maps.
- wall time of each training.
"""
import argparse, json, os, time
from pathlib import Path
import numpy as np
import torch

# E. coli AdK domains, 1AKE residue numbering (Beckstein et al. 2009, J. Mol. Biol. 394:160)
ADK_DOMAINS = {"CORE": [(1, 29), (60, 121), (160, 214)], "NMP": [(30, 59)], "LID": [(122, 159)]}
ADK_BOUNDARIES = (29.5, 59.5, 121.5, 159.5)


def domain_labels(resids) -> np.ndarray:
    """Domain name per residue number `resids (N,)` (1AKE numbering); 'none' outside the table."""
    out = np.full(len(resids), "none", dtype=object)
    for name, ranges in ADK_DOMAINS.items():
        for a, b in ranges:
            out[(np.asarray(resids) >= a) & (np.asarray(resids) <= b)] = name
    return out


def segmentation_overlap(segments, resids) -> dict:
    """Compare a hard segmentation `segments (N,)` int with the AdK domains (see module docstring)."""
    from sklearn.metrics import adjusted_rand_score
    segments, resids = np.asarray(segments), np.asarray(resids)
    dom = domain_labels(resids)
    major = {int(s): max(ADK_DOMAINS, key=lambda d: int(((segments == s) & (dom == d)).sum())) for s in np.unique(segments)}
    seg_dom = np.array([major[int(s)] for s in segments], dtype=object)
    jacc = {}
    for d in ADK_DOMAINS:
        a, b = dom == d, seg_dom == d
        jacc[d] = float((a & b).sum() / max((a | b).sum(), 1))
    cuts = resids[:-1][segments[1:] != segments[:-1]] + 0.5  # between residue r and r+1
    nearest = {f"{int(b - .5)}|{int(b + .5)}": (None if len(cuts) == 0 else float(cuts[np.abs(cuts - b).argmin()]))
               for b in ADK_BOUNDARIES}
    runs = []
    start = 0
    for i in range(1, len(segments) + 1):
        if i == len(segments) or segments[i] != segments[start]:
            runs.append(f"{int(resids[start])}-{int(resids[i - 1])}:s{int(segments[start])}")
            start = i
    return {"ARI": float(adjusted_rand_score(dom, segments)), "purity": float((seg_dom == dom).mean()),
            "jaccard_by_domain": jacc, "segment_majority_domain": major, "nearest_boundary": nearest,
            "n_segments_used": int(len(np.unique(segments))), "runs": runs}


def _median_by_state(r, lab):
    return {int(s): float(np.median(r[lab == s])) for s in np.unique(lab)}


def _auc_per_state(data, z, decode, method):
    from cryonb import cryobench
    res = cryobench.evaluate(data, z=z, decode=decode, per_image=0, embedding=None, method=method)
    t = res["per_state"].table
    return {int(s): float(a) for s, a in zip(t.state, t.auc)}


def _render_auc(data, coords, amplitudes, sigma, D, apix):
    """FSC-AUC of Gaussian renderings `coords (S,N,3)` against each state's GT map (S = number of states)."""
    from cryonb import cryobench, projection
    bench = cryobench.load_benchmark(data)
    out = {}
    for s in sorted(bench.gt_maps):
        m = projection.render_gmm_3d(coords[s], amplitudes, sigma, D, apix)
        out[int(s)] = float(cryobench.fsc_metrics(m, bench.gt_maps[s], apix=apix)["auc"])
    return out


def run_cryostar(ds, ref, out, steps, batch, lr=1e-4):
    from cryonb.methods import cryostar as cs
    from cryonb.atomic_vae import encode, decode_coords, decode_map
    cfg = cs.load_config(None, [f"runner.max_steps={steps}", f"data_loader.train_batch_per_gpu={batch}", f"optimizer.lr={lr}",
                                "runner.ckpt_every_n_steps=500", f"loss.warmup_step={max(1, steps // 3)}"])
    t0 = time.time()
    model = cs.AtomTrainer(cfg, ds, ref, out / "cryostar", "cpu").run(progress=False)
    wall = time.time() - t0
    z = encode(model, ds, device="cpu")
    return {"model": model, "z": z, "coords": decode_coords(model, z), "wall_s": wall,
            "decode": lambda zi, m=model: decode_map(m, np.asarray(zi)[None], ds.D, ds.apix)[0]}


def run_cryosphere(ds, ref, out, steps, batch, segments, lr=1e-4, lr_seg=1e-3, blend="sequential", seed=0):
    """cryonb's cryoSPHERE (`methods.cryosphere.train`): the reference's defaults (loss terms and β schedules, full
    clash loss, zdim 8, encoder 512-256-64-64, decoder 512-512, τ 0.05) except the step budget, `N_segm`, the two
    Adam rates (`lr`, `lr_seg`: the reference's 3e-5/3e-4 barely move in a short run) and a 4 Å low-pass
    (`lp_bandwidth`, as `cryonb demo`). `N_epochs` = the budget in epochs, so the β schedules run their course."""
    from cryonb.methods import cryosphere as sp
    n_batches = len(ds) // batch
    image = sp.parse_image({"apix": float(ds.apix), "Npix": ds.D, "Npix_downsize": ds.D, "sigma_gmm": 2.0}, "adk")
    prm = sp.parse_parameters({"folder_path": "-", "base_structure_path": "-", "image_yaml": "-", "cs_star_file": {"file": "-"},
                               "segmentation_config": {"part1": {"all_protein": True, "N_segm": segments}},
                               "N_epochs": -(-steps // n_batches), "max_steps": steps, "batch_size": batch, "num_workers": 0,
                               "seed": seed + 1, "lp_bandwidth": max(4.0, 2.5 * float(ds.apix)), "rotation_blend": blend,
                               "optimizer": {"name": "adam", "learning_rate": lr, "learning_rate_segmentation": lr_seg}}, "adk")
    t0 = time.time()
    model = sp.train(prm, image, ds, ref, out / "cryosphere", "cpu", progress=False, resume=False)
    wall = time.time() - t0
    z = sp.encode(model, ds)
    return {"model": model, "z": z, "coords": sp.decode_coords(model, z), "wall_s": wall,
            "segments": model.deformer.segmenter.hard_labels(),
            "decode": lambda zi, m=model: sp.decode_map(m, np.asarray(zi)[None], ds.D, ds.apix)[0]}


def main(D, states, per_state, snr, steps, batch, segments, methods, out, lr=1e-4, lr_seg=1e-3, blend="sequential", seed=0):
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from cryonb import datasets, structure
    from cryonb.data import ParticleDataset
    out = Path(out); out.mkdir(parents=True, exist_ok=True)
    data = out / "data"
    apix = 1.5 if D == 64 else 1.0
    if not (data / "particles.star").exists():
        datasets.make_adk_dataset(data, states=states, images_per_state=per_state, D=D, apix=apix, snr=snr, seed=seed)
    star = data / "particles.star"
    ds = ParticleDataset(star, labels=data / "labels.npy")
    ref = structure.from_pdb(datasets.adk_files()["closed"], model=0)
    gt_models = structure.from_pdb(data / "gt_models.pdb")
    lab = ds.labels.numpy()
    gt = gt_models.coords[torch.as_tensor(lab)].double()
    res = {"D": D, "apix": apix, "n_images": len(ds), "states": states, "snr": snr, "steps": steps, "batch": batch,
           "threads": torch.get_num_threads()}
    r_base = structure.kabsch_rmsd(ref.coords[0].double().expand_as(gt), gt).numpy()
    res["baseline_1AKE"] = {"median_rmsd_A": float(np.median(r_base)), "rmsd_by_state": _median_by_state(r_base, lab),
                            "auc_by_state": _render_auc(data, ref.coords[0].expand(gt_models.n_models, -1, -1), ref.amplitudes, ref.sigma, D, apix)}
    res["ceiling_rendered_gt"] = {"auc_by_state": _render_auc(data, gt_models.coords, ref.amplitudes, ref.sigma, D, apix)}
    for name in methods:
        r = run_cryostar(ds, ref, out, steps, batch) if name == "cryostar" else \
            run_cryosphere(ds, ref, out, steps, batch, segments, lr, lr_seg, blend)
        rm = structure.kabsch_rmsd(r["coords"].double(), gt).numpy()
        row = {"train_wall_s": round(r["wall_s"], 1), "median_rmsd_A": float(np.median(rm)), "rmsd_by_state": _median_by_state(rm, lab),
               "auc_by_state": _auc_per_state(data, r["z"], r["decode"], name)}
        if "segments" in r:
            rid = np.asarray(ref.resids, dtype=int)
            row["segmentation"] = segmentation_overlap(r["segments"], rid)
            # the reference's uniform initialisation (equal widths and proportions: nearest centre) as the baseline
            row["segmentation_at_init"] = segmentation_overlap(np.arange(len(rid)) * segments // len(rid), rid)
        res[name] = row
        print(json.dumps({name: row}, indent=1), flush=True)
    summary = {k: {"median_rmsd_A": v.get("median_rmsd_A"), "mean_auc": float(np.mean(list(v["auc_by_state"].values()))),
                   **({"train_wall_s": v["train_wall_s"]} if "train_wall_s" in v else {})}
               for k, v in res.items() if isinstance(v, dict) and "auc_by_state" in v}
    res["summary"] = summary
    print(json.dumps(res, indent=1))
    (out / "adk_result.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--D", type=int, default=64); ap.add_argument("--states", type=int, default=10)
    ap.add_argument("--per-state", type=int, default=100); ap.add_argument("--snr", type=float, default=0.1)
    ap.add_argument("--steps", type=int, default=1500); ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--segments", type=int, default=4)
    ap.add_argument("--methods", nargs="+", default=["cryosphere", "cryostar"], choices=["cryosphere", "cryostar"])
    ap.add_argument("--lr", type=float, default=1e-4, help="cryoSPHERE network rate (cryoSTAR keeps its 1e-4)")
    ap.add_argument("--lr-seg", type=float, default=1e-3, help="cryoSPHERE segmentation rate")
    ap.add_argument("--blend", default="sequential", choices=["sequential", "lie"])
    ap.add_argument("--out", default="cryosphere_adk")
    a = ap.parse_args()
    main(a.D, a.states, a.per_state, a.snr, a.steps, a.batch, a.segments, a.methods, a.out, a.lr, a.lr_seg, a.blend)
