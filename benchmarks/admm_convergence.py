"""ADMM convergence on the main job's network: residuals, accuracy after ADMM, after hard prune
(+ BatchNorm re-estimation) and after masked retraining, for one ADMM setting.

Starts from the dense checkpoint of a main-job run (``python -m torch_patsparse`` writes
OUT/dense.pt) and reuses the main job's constraints, data and retraining (torch_patsparse.cli).

    PYTHONPATH=$PWD python benchmarks/admm_convergence.py --dense runs/default/dense.pt \\
        --lr 0.01 --rho 1 --growth 1.5 --rho-max 50 --retrain 4

Prints one line per Z update (max / mean residual; per layer: residual, ||W||, rho_eff) and one per
epoch. ``--rescale-dual`` rescales U by rho_old / rho_new at every update (textbook scaled-dual ADMM;
off by default, as in DESIGN.md and the published ADMM-NN code).
"""
import argparse
import time
import types

import torch

from torch_patsparse import cli
from torch_patsparse.train import train_epoch


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dense", default="runs/default/dense.pt", help="a main-job dense.pt checkpoint")
    ap.add_argument("--epochs", type=int, default=2, help="ADMM epochs")
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--penalty", default="gradient", choices=("gradient", "proximal"),
                    help="ADMM W-step (the rho defaults below are the gradient form's)")
    ap.add_argument("--rho", type=float, default=1.0)
    ap.add_argument("--growth", type=float, default=1.5)
    ap.add_argument("--rho-max", type=float, default=50.0)
    ap.add_argument("--updates-per-epoch", type=int, default=4)
    ap.add_argument("--rescale-dual", action="store_true", help="ADMM(rescale_dual=True)")
    ap.add_argument("--retrain", type=int, default=4, help="masked retraining epochs after the hard prune")
    ap.add_argument("--retrain-lr", type=float, default=0.02)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/admm_convergence")
    a = ap.parse_args()

    cfg = cli.build_config(None)
    cfg["admm"].update(epochs=a.epochs, lr=a.lr, rho=a.rho, rho_growth=a.growth, rho_max=a.rho_max,
                       updates_per_epoch=a.updates_per_epoch, penalty=a.penalty, method="admm")
    cfg["retrain"].update(epochs=a.retrain, lr=a.retrain_lr)
    cfg["threads"] = a.threads
    job = cli.Job(cfg, types.SimpleNamespace(out=a.out, no_progress=True, data=None, interrupt_after=None))
    job.model.load_state_dict(torch.load(a.dense, map_location="cpu", weights_only=False)["model"])
    print(f"dense {job.evaluate():.2f}%", flush=True)
    job.make_admm_opt()
    opt = job.opt
    opt.rescale_dual = a.rescale_dual

    def on_step(_):
        if opt._step_count % opt.update_every:
            return
        res, eff = opt.residuals(), opt.rho_eff()
        norms = {n: float(p.detach().norm()) for g in opt.param_groups if g.get("constraints")
                 for n, p in zip(g["names"], g["params"])}
        layers = " ".join(f"{n.rsplit('.', 1)[0]}:{res[n]:.2f}/{norms[n]:.1f}/{eff[n]:.2g}" for n in res)
        print(f"step {opt._step_count} residual max {max(res.values()):.3f} mean {sum(res.values()) / len(res):.3f} "
              f"(layer: residual/||W||/rho_eff) {layers}", flush=True)

    t0 = time.time()
    for e in range(a.epochs):
        st = train_epoch(job.model, opt, job.x_train, job.y_train, cfg["batch_size"], job.gen, show=False,
                         on_step=on_step)
        print(f"ADMM epoch {e + 1}: train {st['acc']:.2f}% test {job.evaluate():.2f}% ({time.time() - t0:.0f} s)",
              flush=True)
    job.start_retrain()
    print(f"hard pruned + BN re-estimated: {job.evaluate():.2f}%", flush=True)
    for e in range(a.retrain):
        st = train_epoch(job.model, opt, job.x_train, job.y_train, cfg["batch_size"], job.gen, show=False,
                         scheduler=job.sched)
        print(f"retrain epoch {e + 1}: train {st['acc']:.2f}% test {job.evaluate():.2f}% ({time.time() - t0:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
