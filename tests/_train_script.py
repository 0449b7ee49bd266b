"""A small training run of `cryonb.training.TinyVAE` for the tests in `test_training.py`, run as a real
process (plain `python`, or under `python -m torch.distributed.run` for DDP).

    python _train_script.py OUT_DIR --max-steps N --batch-size B [--resume] [--deterministic] [--sleep S] [--grad-clip C]

Writes `OUT_DIR/train_log.jsonl`, `OUT_DIR/checkpoints/` and, at the end (rank 0), `OUT_DIR/final.pt`
(the model's state dict)."""
import argparse, time
import torch
from cryonb import distributed as cdist
from cryonb.training import TrainConfig, Trainer, TinyVAE, blob_images, vae_step, Callback


class _Sleep(Callback):
    def __init__(self, s): self.s = s
    def on_step_end(self, trainer, step, logs): time.sleep(self.s)


def _det_step(model, batch, step):
    "Like vae_step but without the random reparametrisation (decode μ), so ranks do not draw noise."
    images = batch[0]
    mu, logvar = model.enc(images.flatten(1)).chunk(2, dim=-1)
    recon = model.dec(mu).view_as(images)
    mse = (recon - images).pow(2).mean()
    kl = -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).mean()
    return mse + 0.01 * kl, {"mse": mse, "kl": kl}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out_dir")
    p.add_argument("--max-steps", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ckpt-every", type=int, default=5)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--sleep", type=float, default=0.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--deterministic", action="store_true")
    a = p.parse_args()
    torch.set_num_threads(1)
    device, created = cdist.init_from_env("cpu")
    torch.manual_seed(0)
    model = TinyVAE()
    cfg = TrainConfig(max_steps=a.max_steps, batch_size=a.batch_size, lr=3e-3, log_every=1, ckpt_every=a.ckpt_every,
                      grad_clip=a.grad_clip, out_dir=a.out_dir, progress=False)
    t = Trainer(model, cfg, _det_step if a.deterministic else vae_step(), device=device,
                callbacks=[_Sleep(a.sleep)] if a.sleep else None)
    t.fit(blob_images(64), resume=a.resume)
    if cdist.is_main(): torch.save(t.model.state_dict(), f"{a.out_dir}/final.pt")
    cdist.cleanup(created)
    if created: cdist.exit_worker(0)   # skip finalization races of gloo's threads


if __name__ == "__main__":
    main()
