"""ADMM optimizer overhead benchmarks (CPU).

(1) optimizer.step between Z updates vs the base optimizer's step, on the parameters of a VGG-16
    (CIFAR-style classifier), random gradients; the two optimizers are timed interleaved (each
    on its own copy of the parameters) and medians compared. Only ``optimizer.step`` is timed.
(2) one Z/U update (``opt.admm_update()``: Z = Proj(W + U), U += W - Z, rho update) over all
    VGG-16 conv weights with Pattern(k=8) + Connectivity(keep=0.25) + Quantize(bits=4), one thread.

    PYTHONPATH=$PWD python benchmarks/bench_admm.py [--reps 15] [--threads 1]
"""
import argparse
import statistics
import time

import torch
import torch.nn as nn

import torch_patsparse as ps
from torch_patsparse import constraints as C

VGG16_CONVS = [(64, 3), (64, 64), (128, 64), (128, 128), (256, 128), (256, 256), (256, 256),
               (512, 256), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]


def vgg16_params(seed=0):
    """Conv weights (kaiming), BN weight/bias, classifier (CIFAR-style 512-512-10) as Parameters."""
    g = torch.Generator().manual_seed(seed)
    convs, rest = [], []
    for co, ci in VGG16_CONVS:
        convs.append(nn.Parameter(torch.randn(co, ci, 3, 3, generator=g) * (2.0 / (9 * ci)) ** 0.5))
        rest += [nn.Parameter(torch.ones(co)), nn.Parameter(torch.zeros(co))]
    for o, i in [(512, 512), (512, 512), (10, 512)]:
        rest += [nn.Parameter(torch.randn(o, i, generator=g) * i ** -0.5), nn.Parameter(torch.zeros(o))]
    return convs, rest


def set_grads(params, seed):
    g = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3


def clone(params):
    return [nn.Parameter(p.detach().clone()) for p in params]


CONS = [C.Pattern(k=8), C.Connectivity(keep=0.25), C.Quantize(bits=4)]


def bench_step(base, kw, reps):
    convs, rest = vgg16_params()
    c2, r2 = clone(convs), clone(rest)
    base_opt = base(convs + rest, **kw)
    admm = ps.ADMM([{"params": c2, "constraints": CONS}, {"params": r2}], base=base, penalty="gradient",
                   update_every=10 ** 9, **kw)
    set_grads(convs + rest, 1)
    set_grads(c2 + r2, 1)
    base_opt.step()
    admm.step()  # initialises Z, U, pattern set, rho_eff (not timed) and the base state
    tb, ta, cb, ca = [], [], [], []
    for i in range(reps):
        order = ((base_opt, tb, cb), (admm, ta, ca))
        for opt, ts, cs in order if i % 2 == 0 else order[::-1]:
            t0, c0 = time.perf_counter(), time.process_time()
            opt.step()
            ts.append(time.perf_counter() - t0)
            cs.append(time.process_time() - c0)
    med = statistics.median
    return (med(tb), med(ta)), (med(cb), med(ca))



def bench_update(reps):
    convs, _ = vgg16_params()
    opt = ps.ADMM([{"params": convs, "constraints": CONS}], lr=0.01, momentum=0.9, update_every=10 ** 9, penalty="gradient")
    t0, c0 = time.perf_counter(), time.process_time()
    opt._ensure_init()  # pattern-set selection + Z = Proj(W), U = 0
    t_init = (time.perf_counter() - t0, time.process_time() - c0)
    ts, cs = [], []
    for _ in range(reps):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.admm_update()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return t_init, (statistics.median(ts), statistics.median(cs)), (min(ts), min(cs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--update-reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["step", "update"], default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    n = sum(co * ci * 9 for co, ci in VGG16_CONVS)
    print(f"torch {torch.__version__}, threads={torch.get_num_threads()}, VGG-16 conv weights: {n / 1e6:.2f} M")
    if a.only != "update":
        bench_steps(a)
    if a.only != "step":
        bench_updates(a)


def bench_steps(a):
    print("\n(1) optimizer.step between Z updates, median of interleaved runs")
    print("| base | base step ms | ADMM step ms | ratio (wall) | ratio (CPU time) | target |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, base, kw in [("SGD momentum=0.9", torch.optim.SGD, dict(lr=0.01, momentum=0.9)),
                           ("SGD momentum=0.9 wd=5e-4", torch.optim.SGD, dict(lr=0.01, momentum=0.9, weight_decay=5e-4)),
                           ("Adam", torch.optim.Adam, dict(lr=1e-3)),
                           ("AdamW wd=1e-2", torch.optim.AdamW, dict(lr=1e-3, weight_decay=1e-2))]:
        (tb, ta), (cb, ca) = bench_step(base, kw, a.reps)
        print(f"| {name} | {tb * 1e3:.1f} | {ta * 1e3:.1f} | {ta / tb:.2f}x | {ca / cb:.2f}x | <= 1.15x |", flush=True)


def bench_updates(a):
    t_init, t_med, t_min = bench_update(a.update_reps)
    print("\n(2) one Z/U update, all 13 VGG-16 conv weights, Pattern(k=8)+Connectivity(0.25)+Quantize(4)")
    print("| what | wall s | CPU s (process_time) | target |")
    print("|---|---:|---:|---:|")
    print(f"| first init (pattern selection + Z = Proj(W)) | {t_init[0]:.3f} | {t_init[1]:.3f} | |")
    print(f"| admm_update(), median of {a.update_reps} | {t_med[0]:.3f} | {t_med[1]:.3f} | < 1 s |")
    print(f"| admm_update(), min | {t_min[0]:.3f} | {t_min[1]:.3f} | |")


if __name__ == "__main__":
    main()
