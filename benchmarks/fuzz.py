"""Fuzz over compressed arrays and op arguments: does anything give a silent wrong result or crash?

Case families (each case is rebuilt from (seed, index) alone, so any case reruns by itself):
  load:pattern / load:pattern-q   state_dict of a PatternConv2d (fp32 / k-bit codes + scale), corrupted
  load:sparse-conv / load:sparse-linear   same for SparseConv2d / SparseLinear (fp32 or k-bit)
      corruptions: bit / byte flips, dtype and shape changes, truncation, NaN / 0 / negative / inf scale,
      duplicate kernels, out-of-range indices, missing / extra / non-tensor entries, wrong
      _extra_state types, a checkpoint of another layer shape or quantization
  op:conv / op:grad-input / op:grad-values / op:validate   direct torch.ops.patsparse calls with
      random, zero, negative and huge shapes, strides, paddings, dilations and corrupted arrays
  module:input    a valid module called on inputs of another channel count / rank / dtype

Each case ends in one class:
  rejected             ValueError / RuntimeError / TypeError with a message (and, for a load, the
                       module left exactly as it was)
  accepted-correct     accepted, and the result equals F.conv2d / F.linear with the module's own
                       dense weight (or, for an op, a float64 dense reference) within 1e-5, and the
                       loaded state is what the module reports (re-saving and reloading it is stable)
  accepted-wrong       accepted but not correct (includes: a checkpoint of another shape accepted, a
                       non-finite / non-positive scale accepted, a module that no longer runs)
  rejected-dirty       rejected, but the module kept (part of) the bad state
  wrong-exception      any other exception type (IndexError, KeyError, AttributeError, ...) or no message
  crash / hang         the worker process died (signal) / took longer than --case-timeout
  sanitizer            an AddressSanitizer / UBSan report in the worker's stderr
Bad classes (all must be 0): everything except rejected and accepted-correct.

Cases run in worker subprocesses (a batch each); a crash is recorded and the batch resumes after it.

  python benchmarks/fuzz.py --seed 1 --cases 10000              # summary table + one line per defect
  python benchmarks/fuzz.py --seed 1 --case 1234 -v             # rerun one case in-process, verbosely
"""
import argparse
import collections
import json
import math
import os
import random
import selectors
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

GOOD = ("rejected", "accepted-correct")
BAD = ("crash", "hang", "sanitizer", "accepted-wrong", "rejected-dirty", "wrong-exception")
CLEAN_EXC = (ValueError, RuntimeError, TypeError)
TOL = 1e-5
HUGE = [2**16, 2**31 - 1, 2**31, 2**32, 2**62 - 1, 2**63 - 1]
FAMILIES = [("load:pattern", 6), ("load:pattern-q", 6), ("load:sparse-conv", 4), ("load:sparse-linear", 3),
            ("op:conv", 5), ("op:grad-input", 2), ("op:grad-values", 2), ("op:validate", 2), ("module:input", 2)]


class _Ctx(dict):
    """What the running case is (desc, tag); a worker streams every update to the parent, so a
    case that kills the process is still described."""
    emit = None

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        if _Ctx.emit:
            _Ctx.emit(dict(self))


class Outcome(Exception):
    def __init__(self, cls, tag, detail=""):
        super().__init__(f"{cls} [{tag}] {detail}")
        self.cls, self.tag, self.detail = cls, tag, detail


# ----------------------------------------------------------------------------------------------
# building blocks
# ----------------------------------------------------------------------------------------------
def _torch():
    import torch
    return torch


def _close(got, want):
    """max |got - want| <= TOL * max(1, max |want|), NaN where want has NaN; shapes must match."""
    torch = _torch()
    if tuple(got.shape) != tuple(want.shape):
        return False, f"shape {tuple(got.shape)} != {tuple(want.shape)}"
    g = got.detach().double().cpu()
    w = want.detach().cpu().to(got.dtype if got.is_floating_point() else torch.float64).double()  # fp32 overflow alike
    nan_w = torch.isnan(w)
    big = torch.isinf(w) | (w.abs() > 1e30)  # near fp32's range, accumulation order decides overflow
    if not torch.isnan(g[nan_w]).all():
        return False, "NaN expected"
    fin = ~nan_w & ~big
    if fin.any():
        if not torch.isfinite(g[fin]).all():
            return False, "non-finite where a finite value is expected"
        err = float((g[fin] - w[fin]).abs().max())
        scale = max(1.0, float(w[fin].abs().max()))
        if not err <= TOL * scale:
            return False, f"max abs err {err:.3g} (scale {scale:.3g})"
    return True, ""


def _snapshot(mod):
    return {k: (v.detach().clone() if hasattr(v, "detach") else v) for k, v in mod.state_dict().items()}


def _same_state(a, b):
    torch = _torch()
    if a.keys() != b.keys():
        return False
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, torch.Tensor) != isinstance(y, torch.Tensor):
            return False
        if isinstance(x, torch.Tensor):
            if x.dtype != y.dtype or x.shape != y.shape or not torch.equal(x.nan_to_num(7.0), y.nan_to_num(7.0)):
                return False
        elif x != y:
            return False
    return True


def _classify_exception(e, tag):
    if isinstance(e, Outcome):
        raise e
    if isinstance(e, CLEAN_EXC) and str(e).strip():
        return None
    raise Outcome("wrong-exception", f"{tag}:{type(e).__name__}", f"{type(e).__name__}: {str(e)[:200]}")


# ----------------------------------------------------------------------------------------------
# modules and their state_dict corruption
# ----------------------------------------------------------------------------------------------
def _make_module(family, rng, cfg=None):
    """(module, config) for a family; cfg given: a fresh module of that config (the load target)."""
    torch = _torch()
    from torch import nn
    from torch_patsparse.nn import PatternConv2d, SparseConv2d, SparseLinear
    if cfg is None:
        if family.startswith("load:pattern"):
            cfg = dict(cin=rng.randint(1, 6), cout=rng.randint(1, 6), stride=rng.choice([1, 1, 2]),
                       padding=rng.choice([0, 1, 2]), dilation=rng.choice([1, 1, 2]), bias=rng.random() < 0.7,
                       bits=rng.randint(1, 8) if family == "load:pattern-q" else None,
                       scheme=rng.choice(["uniform", "pow2"]), keep=rng.choice([0.0, 0.3, 0.7, 1.0]))
        elif family == "load:sparse-conv":
            g = rng.choice([1, 1, 2])
            cfg = dict(cin=g * rng.randint(1, 3), cout=g * rng.randint(1, 3), k=rng.choice([1, 2, 3, 5]),
                       stride=rng.choice([1, 2]), padding=rng.choice([0, 1]), dilation=rng.choice([1, 2]),
                       groups=g, bias=rng.random() < 0.7, bits=rng.choice([None, None, 1, 2, 3, 4, 8]),
                       scheme=rng.choice(["uniform", "pow2"]), keep=rng.choice([0.0, 0.05, 0.3, 0.9]))
        else:
            cfg = dict(cin=rng.randint(1, 12), cout=rng.randint(1, 8), bias=rng.random() < 0.7,
                       bits=rng.choice([None, None, 1, 2, 3, 4, 8]), scheme=rng.choice(["uniform", "pow2"]),
                       keep=rng.choice([0.0, 0.05, 0.3, 0.9]))
        gen = torch.Generator().manual_seed(rng.getrandbits(31))
        if family.startswith("load:pattern"):
            dense = nn.Conv2d(cfg["cin"], cfg["cout"], 3, cfg["stride"], cfg["padding"], cfg["dilation"],
                              bias=cfg["bias"])
        elif family == "load:sparse-conv":
            dense = nn.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"],
                              cfg["groups"], bias=cfg["bias"])
        else:
            dense = nn.Linear(cfg["cin"], cfg["cout"], bias=cfg["bias"])
        with torch.no_grad():
            w = torch.randn(dense.weight.shape, generator=gen)
            if family.startswith("load:pattern"):  # connectivity: drop whole kernels
                w *= (torch.rand(w.shape[:2], generator=gen) < cfg["keep"]).float()[:, :, None, None]
            else:
                w *= (torch.rand(w.shape, generator=gen) < cfg["keep"]).float()
            dense.weight.copy_(w)
            if dense.bias is not None:
                dense.bias.copy_(torch.randn(dense.bias.shape, generator=gen))
        if family.startswith("load:pattern"):
            return PatternConv2d.from_dense(dense, bits=cfg["bits"], scheme=cfg["scheme"]), cfg
        if family == "load:sparse-conv":
            return SparseConv2d.from_dense(dense, bits=cfg["bits"], scheme=cfg["scheme"]), cfg
        return SparseLinear.from_dense(dense, bits=cfg["bits"], scheme=cfg["scheme"]), cfg
    if family.startswith("load:pattern"):
        return PatternConv2d(cfg["cin"], cfg["cout"], stride=cfg["stride"], padding=cfg["padding"],
                             dilation=cfg["dilation"], bias=cfg["bias"], bits=cfg["bits"], scheme=cfg["scheme"]), cfg
    if family == "load:sparse-conv":
        return SparseConv2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"],
                            cfg["groups"], cfg["bias"]), cfg
    return SparseLinear(cfg["cin"], cfg["cout"], cfg["bias"]), cfg


DTYPES = ["uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16", "float32", "float64", "bool"]


def _corrupt_state(family, sd, cfg, rng):
    """Applies 1-2 corruptions to ``sd`` (in place); returns (descriptions, target cfg, tags)."""
    torch = _torch()
    keys = [k for k in sd if isinstance(sd[k], torch.Tensor)]
    descs, tags = [], set()
    target = dict(cfg)
    for _ in range(rng.choice([1, 1, 1, 2])):
        kind = rng.choice(["flip", "flip", "byte", "dtype", "shape", "truncate", "extend", "scale", "dup",
                           "index", "index", "missing", "extra", "nontensor", "extra_state", "config",
                           "noncontig", "none", "swap"])
        k = rng.choice(keys) if keys else None
        t = sd.get(k) if k else None
        if kind in ("flip", "byte") and isinstance(t, torch.Tensor) and t.numel():
            raw = t.detach().clone().contiguous().view(-1)
            b = raw.view(torch.uint8) if raw.dtype != torch.bool else raw.to(torch.uint8)
            i = rng.randrange(b.numel())
            if kind == "flip":
                b[i] ^= 1 << rng.randrange(8)
            else:
                b[i] = rng.randrange(256)
            sd[k] = (b.view(t.dtype) if t.dtype != torch.bool else b.bool()).view(t.shape)
            descs.append(f"{kind} {k}[byte {i}]")
        elif kind == "dtype" and isinstance(t, torch.Tensor):
            d = rng.choice(DTYPES)
            sd[k] = t.to(getattr(torch, d))
            descs.append(f"{k}.to({d})")
        elif kind == "shape" and isinstance(t, torch.Tensor):
            choice = rng.choice(["0d", "unsqueeze", "flatten", "2col"])
            if choice == "0d":
                sd[k] = t.reshape(-1)[:1].reshape(()) if t.numel() else torch.zeros((), dtype=t.dtype)
            elif choice == "unsqueeze":
                sd[k] = t.unsqueeze(0)
            elif choice == "flatten":
                sd[k] = t.reshape(-1)
            else:
                sd[k] = t.reshape(-1, 1) if t.numel() else t.reshape(0, 2)
            descs.append(f"{k} reshaped {choice} -> {tuple(sd[k].shape)}")
        elif kind in ("truncate", "extend") and isinstance(t, torch.Tensor) and t.dim() >= 1:
            n = t.shape[0]
            if kind == "truncate":
                m = rng.choice([0, max(n - 1, 0)])
                sd[k] = t[:m].clone()
            else:
                m = rng.choice([1, 2])
                sd[k] = torch.cat([t, t[:1].expand(m, *t.shape[1:]) if n else torch.zeros(m, *t.shape[1:], dtype=t.dtype)])
            descs.append(f"{k} {kind}d to length {sd[k].shape[0]}")
        elif kind == "scale" and "scale" in sd and isinstance(sd["scale"], torch.Tensor) and sd["scale"].numel():
            v = rng.choice([float("nan"), 0.0, -1.0, -0.5, float("inf"), -float("inf"), 1e38, 1e-45])
            s = sd["scale"].clone()
            s.fill_(v)
            sd["scale"] = s
            descs.append(f"scale = {v}")
        elif kind == "dup" and "filter_ptr" in sd and "kernel_channel" in sd:
            fp, cands = _dup_candidates(sd["filter_ptr"], sd["kernel_channel"])
            if cands:
                o = rng.choice(cands)
                a, b = rng.sample(range(fp[o], fp[o + 1]), 2)
                kc = sd["kernel_channel"].clone()
                kc[a] = kc[b]
                sd["kernel_channel"] = kc
                descs.append(f"duplicate kernel: filter {o} kernel {a} := channel of kernel {b}")
        elif kind == "index" and family.startswith("load:pattern"):
            name = rng.choice(["filter_ptr", "kernel_channel", "kernel_pattern", "patterns"])
            t = sd[name].clone() if isinstance(sd.get(name), torch.Tensor) else None
            if t is not None and t.numel() and not t.is_floating_point() and t.dtype != torch.bool:
                i = rng.randrange(t.numel())
                info = torch.iinfo(t.dtype)
                cand = [info.min, info.max, -1, cfg["cin"], cfg["cin"] + 1, t.shape[0], 9, 255]
                v = min(max(rng.choice(cand), info.min), info.max)
                t.view(-1)[i] = v
                sd[name] = t
                descs.append(f"{name}.view(-1)[{i}] = {v}")
        elif kind == "index" and isinstance(sd.get("header"), torch.Tensor):
            h = sd["header"].clone()
            if h.numel():
                i = rng.randrange(h.numel())
                h[i] = rng.randrange(256)
                sd["header"] = h
                descs.append(f"header[{i}] = {int(h[i])}")
        elif kind == "missing" and k:
            del sd[k]
            keys.remove(k)
            descs.append(f"del {k}")
        elif kind == "extra":
            name, n = rng.choice(["bogus", "weight", "values", "codes", "scale"]), rng.choice([0, 1, 3])
            sd[name] = torch.zeros(n)
            descs.append(f"{name} = torch.zeros({n})")
        elif kind == "nontensor" and k:
            sd[k] = rng.choice([None, 3, [1, 2], "x", 2.5])
            descs.append(f"{k} = {sd[k]!r}")
        elif kind == "extra_state" and family.startswith("load:pattern"):
            v = rng.choice([None, 4, [4], "uniform", {"bits": 0}, {"bits": 9}, {"bits": "4"}, {"bits": 4.0},
                            {"bits": True}, {"scheme": "foo"}, {"bits": 4, "scheme": None}, {}, {"bits": None}])
            sd["_extra_state"] = v
            descs.append(f"_extra_state = {v!r}")
        elif kind == "config":
            field = rng.choice(["cin", "cout", "bits"])
            if field == "bits":
                target["bits"] = None if cfg["bits"] else rng.choice([2, 4, 8])
                if family == "load:sparse-linear" or family == "load:sparse-conv":
                    continue  # bits is stored data there, not configuration
            else:
                mult = cfg.get("groups", 1)
                target[field] = max(mult, cfg[field] + mult * rng.choice([-1, 1, 2]))
                if target[field] == cfg[field]:
                    target[field] += mult
            descs.append(f"load into {field}={target[field]} (saved from {cfg[field]})")
            tags.add("config")
        elif kind == "noncontig" and isinstance(t, torch.Tensor) and t.dim() == 2:
            sd[k] = t.t().contiguous().t()
            descs.append(f"{k} non-contiguous (same values)")
        elif kind == "swap" and len(keys) >= 2:
            a, b = rng.sample(keys, 2)
            sd[a], sd[b] = sd[b], sd[a]
            descs.append(f"swap {a} <-> {b}")
        else:
            descs.append("unchanged")
    sc = sd.get("scale")  # judged on the final state (a later corruption may overwrite an earlier one)
    if isinstance(sc, torch.Tensor) and sc.is_floating_point() and sc.numel() == 1:
        v = float(sc)
        if not math.isfinite(v) or v < 0:
            tags.add("bad-scale")
        elif v == 0:  # fine only for an all-zero layer (nothing to scale)
            tags.add("zero-scale")
    return descs, target, tags


def _dup_candidates(fp, kc):
    """(filter_ptr list, filters with >= 2 kernels) when the CSR is sane enough to edit, else ([], [])."""
    torch = _torch()
    if not (isinstance(fp, torch.Tensor) and isinstance(kc, torch.Tensor) and fp.dim() == 1 and kc.dim() == 1):
        return [], []
    f = fp.long().tolist()
    if not f or f[0] != 0 or f[-1] != kc.numel() or any(b < a for a, b in zip(f, f[1:])):
        return [], []
    return f, [o for o in range(len(f) - 1) if f[o + 1] - f[o] >= 2]


def _decode_pattern(sd, cin, cout):
    """Independent dense weight of PatternConv2d arrays (sums a kernel listed twice)."""
    torch = _torch()
    from torch_patsparse import bitpack
    pats, fp = sd["patterns"].long(), sd["filter_ptr"].long()
    kc, kp = sd["kernel_channel"].long(), sd["kernel_pattern"].long()
    if "codes" in sd:
        return None  # the quantized decode is checked by the reload round trip instead
    vals = sd["values"].double()
    w = torch.zeros(cout, cin, 9, dtype=torch.float64)
    for o in range(cout):
        for k in range(int(fp[o]), int(fp[o + 1])):
            for e in range(pats.shape[1]):
                w[o, int(kc[k]), int(pats[int(kp[k]), e])] += vals[k, e]
    del bitpack
    return w.view(cout, cin, 3, 3)


def _module_reference(mod, x):
    """F.conv2d / F.linear of x with the module's own dense weight, in float64."""
    torch = _torch()
    import torch.nn.functional as F
    from torch_patsparse.nn import PatternConv2d, SparseLinear
    if isinstance(mod, PatternConv2d):
        dense = mod.to_dense()
    else:
        dense = mod.to_dense()
    b = None if dense.bias is None else dense.bias.double()
    if isinstance(mod, SparseLinear):
        return F.linear(x.double(), dense.weight.double(), b), dense.weight
    return F.conv2d(x.double(), dense.weight.double(), b, dense.stride, dense.padding, dense.dilation,
                    dense.groups), dense.weight


def _probe_input(mod, rng, channels=None):
    torch = _torch()
    from torch_patsparse.nn import SparseLinear
    gen = torch.Generator().manual_seed(rng.getrandbits(31))
    if isinstance(mod, SparseLinear):
        return torch.randn(2, channels or mod.in_features, generator=gen)
    span = [d * (k - 1) + 1 for d, k in zip(mod.dilation, getattr(mod, "kernel_size", (3, 3)))]
    return torch.randn(2, channels or mod.in_channels, span[0] + rng.randint(2, 6), span[1] + rng.randint(2, 6),
                       generator=gen)


def _check_runs_correct(mod, rng, tag):
    """The module's forward equals the dense reference of its own weight; raises Outcome if not."""
    torch = _torch()
    x = _probe_input(mod, rng)
    try:
        out = mod(x)
        ref, weight = _module_reference(mod, x)
    except Exception as e:  # accepted, but it no longer runs
        raise Outcome("accepted-wrong", tag + ":broken", f"forward/to_dense raised {type(e).__name__}: {str(e)[:160]}")
    if not torch.isfinite(weight).all():  # inf/NaN weights (fp32 bit flips): compare where both are finite
        both = torch.isfinite(out.double()) & torch.isfinite(ref)
        out, ref = torch.where(both, out.double(), 0.0), torch.where(both, ref, 0.0)
    ok, why = _close(out, ref)
    if not ok:
        raise Outcome("accepted-wrong", tag + ":forward", f"forward != dense reference of to_dense(): {why}")
    return weight


def _run_load(family, rng, ctx):
    torch = _torch()
    src, cfg = _make_module(family, rng)
    sd = {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in src.state_dict().items()}
    descs, tcfg, tags = _corrupt_state(family, sd, cfg, rng)
    desc = ctx["desc"] = f"{family} cfg={cfg} | " + "; ".join(descs)
    dst, _ = _make_module(family, rng, tcfg)
    before = _snapshot(dst)
    probe = _probe_input(dst, random.Random(1))
    out_before = dst(probe)
    incoming = dict(sd)
    try:
        dst.load_state_dict(sd)
    except Exception as e:
        if _classify_exception(e, "load") is None:
            # Like nn.Module: a load refused only for missing / unexpected keys may have copied the
            # rest (torch does so too); then the module must merely still be consistent.
            lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()]
            keys_only = bool(lines) and all(ln.startswith(("Missing key(s)", "Unexpected key(s)")) for ln in lines)
            if keys_only:
                _check_runs_correct(dst, rng, "load:keys-rejected")
            else:
                after = _snapshot(dst)
                try:
                    same_out = _close(dst(probe), out_before)[0]
                except Exception:
                    same_out = False
                if not _same_state(before, after) or not same_out:
                    raise Outcome("rejected-dirty", "load", "rejected load changed the module's state") from None
            return desc, "rejected", type(e).__name__ + ": " + str(e).splitlines()[0][:160]
    # accepted: the checkpoint must have been one this layer can hold
    if "config" in tags:
        raise Outcome("accepted-wrong", "load:config", "checkpoint of another layer shape / quantization accepted")
    codes = getattr(dst, "codes", None)
    if "bad-scale" in tags or ("zero-scale" in tags and isinstance(codes, torch.Tensor) and bool(codes.any())):
        raise Outcome("accepted-wrong", "load:bad-scale", "non-finite, negative or zero (with nonzero codes) scale accepted")
    if family != "load:pattern" and "scale" in incoming:  # k-bit codes x a finite scale overflowing fp32
        try:
            w = dst.to_dense().weight
        except Exception:
            w = None
        if w is not None and not torch.isfinite(w).all():
            raise Outcome("accepted-wrong", "load:scale-overflow", "quantized layer decodes to non-finite weights")
    weight = _check_runs_correct(dst, rng, "load")
    # what it reports: its own state reloads into a fresh module with the same weight
    saved = dst.state_dict()
    again, _ = _make_module(family, rng, tcfg)
    try:
        again.load_state_dict(saved)
    except Exception as e:
        raise Outcome("accepted-wrong", "load:resave", f"re-saved state does not load: {type(e).__name__}: {e}")
    ok, why = _close(_module_reference(again, probe)[1], weight)
    if not ok:
        raise Outcome("accepted-wrong", "load:resave", f"re-saved state decodes differently: {why}")
    if family == "load:pattern":
        try:
            indep = _decode_pattern(incoming, dst.in_channels, dst.out_channels)
        except Exception:
            indep = None
        if indep is not None:
            ok, why = _close(weight, indep)
            if not ok:
                raise Outcome("accepted-wrong", "load:decode", f"to_dense() != the loaded arrays: {why}")
    return desc, "accepted-correct", ""


# ----------------------------------------------------------------------------------------------
# direct op calls
# ----------------------------------------------------------------------------------------------
def _geom(rng):
    r = rng.random()
    if r < 0.5:
        return [rng.choice([1, 1, 2, 3]), rng.choice([1, 1, 2, 3])], "normal"
    if r < 0.7:  # valid but huge; both axes alike half the time (stride_h * stride_w overflows)
        v = [rng.choice(HUGE), rng.choice(HUGE + [1, 2])]
        return (v if rng.random() < 0.5 else [v[0], v[0]]), "odd"
    pool = [0, -1, -2**31, rng.choice(HUGE), 1, 2]
    v = [rng.choice(pool), rng.choice(pool)]
    if r > 0.93:
        v = rng.choice([[], [1], [1, 1, 1], [1.5, 1], ["1", 1], None])
    return v, "odd"


def _random_arrays(rng, cin, cout, dtype):
    torch = _torch()
    from torch_patsparse import format as fmt
    from torch_patsparse.patterns import PatternSet
    pats = PatternSet.candidates().to_tensor()[: rng.choice([1, 4, 8])]
    gen = torch.Generator().manual_seed(rng.getrandbits(31))
    w = torch.randn(cout, cin, 9, generator=gen, dtype=torch.float64)
    pid = torch.randint(0, pats.shape[0], (cout, cin), generator=gen)
    mask = torch.zeros(cout, cin, 9, dtype=torch.bool)
    mask.scatter_(2, pats.long()[pid], True)
    mask &= (torch.rand(cout, cin, generator=gen) < rng.choice([0.0, 0.5, 1.0]))[:, :, None]
    arrays = fmt.compress((w * mask).view(cout, cin, 3, 3).to(dtype), pats)
    return [arrays[n] for n in fmt.ARRAY_NAMES]


def _corrupt_arrays(arr, rng, cin):
    torch = _torch()
    names = ["patterns", "filter_ptr", "kernel_channel", "kernel_pattern", "values"]
    i = rng.randrange(5)
    t = arr[i]
    kind = rng.choice(["dtype", "len", "index", "dup", "0d", "nan"])
    if kind == "dtype":
        arr[i] = t.to(getattr(torch, rng.choice(DTYPES)))
    elif kind == "len" and t.dim() >= 1:
        arr[i] = t[: max(t.shape[0] - 1, 0)] if rng.random() < 0.5 else torch.cat([t, t[:1]]) if t.shape[0] else t
    elif kind == "index" and t.numel() and not t.is_floating_point():
        info = torch.iinfo(t.dtype)
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = min(max(rng.choice([info.min, info.max, -1, cin, 9, 255]), info.min),
                                                   info.max)
        arr[i] = t
    elif kind == "dup":
        fp, cands = _dup_candidates(arr[1], arr[2])
        if cands:
            o = rng.choice(cands)
            a, b = rng.sample(range(fp[o], fp[o + 1]), 2)
            kc = arr[2].clone()
            kc[a] = kc[b]
            arr[2] = kc
            return "duplicate kernel"
        return "unchanged"
    elif kind == "0d":
        arr[i] = t.reshape(-1)[:1].reshape(()) if t.numel() else torch.zeros((), dtype=t.dtype)
    elif kind == "nan" and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[rng.randrange(t.numel())] = float("nan")
        arr[i] = t
    else:
        return "unchanged"
    return f"{kind} {names[i]}"


def _dense_from_arrays(arr, cin):
    """float64 dense weight of valid arrays (a kernel listed twice sums, as the kernels do)."""
    torch = _torch()
    pats, fp, kc, kp, vals = arr
    cout = fp.numel() - 1
    counts = (fp[1:].long() - fp[:-1].long())
    o = torch.repeat_interleave(torch.arange(cout), counts)
    w = torch.zeros(cout * cin * 9, dtype=torch.float64)
    pos = pats.long()[kp.long()]
    flat = (o[:, None] * cin + kc.long()[:, None]) * 9 + pos
    w.index_put_((flat.reshape(-1),), vals.double().reshape(-1), accumulate=True)
    return w.view(cout, cin, 3, 3)


def _has_dup(arr):
    fp, kc = arr[1].long().tolist(), arr[2].long().tolist()
    return any(len(set(kc[fp[o]:fp[o + 1]])) != fp[o + 1] - fp[o] for o in range(len(fp) - 1))


def _ref_conv(x, w, b, stride, padding, dilation):
    """float64 conv with exact (Python int) geometry: F.conv2d, or a direct loop when it cannot run."""
    torch = _torch()
    import torch.nn.functional as F
    n, cin, h, wd = x.shape
    oh = (h + 2 * padding[0] - dilation[0] * 2 - 1) // stride[0] + 1
    ow = (wd + 2 * padding[1] - dilation[1] * 2 - 1) // stride[1] + 1
    if oh > 0 and ow > 0 and (cin == 0 or n == 0):  # F.conv2d mishandles 0 input channels
        out = torch.zeros(n, w.shape[0], oh, ow, dtype=torch.float64)
        return out if b is None else out + b.double()[None, :, None, None]
    padded = n * cin * (h + 2 * padding[0]) * (wd + 2 * padding[1])
    if max(stride + padding + dilation) < 2**20 and padded < 2**24:  # explicit zero padding: also for H / W = 0
        xp = F.pad(x.double(), (padding[1], padding[1], padding[0], padding[0]))
        return F.conv2d(xp, w, None if b is None else b.double(), stride, 0, dilation)
    if oh <= 0 or ow <= 0 or oh * ow > 4096:
        return None
    out = torch.zeros(n, w.shape[0], oh, ow, dtype=torch.float64)
    if b is not None:
        out += b.double()[None, :, None, None]
    xd = x.double()
    for i in range(oh):
        for j in range(ow):
            for kh in range(3):
                for kw in range(3):
                    ih, iw = i * stride[0] - padding[0] + kh * dilation[0], j * stride[1] - padding[1] + kw * dilation[1]
                    if 0 <= ih < h and 0 <= iw < wd:
                        out[:, :, i, j] += xd[:, :, ih, iw] @ w[:, :, kh, kw].t()
    return out


def _run_op(family, rng, ctx):
    torch = _torch()
    ops = torch.ops.patsparse
    cin, cout = rng.randint(1, 5), rng.randint(1, 5)
    dtype = rng.choice([torch.float32, torch.float32, torch.float64])
    arr = _random_arrays(rng, cin, cout, dtype)
    descs = []
    if rng.random() < 0.35:
        descs.append(_corrupt_arrays(arr, rng, cin))
    stride, g1 = _geom(rng)
    padding, g2 = _geom(rng)
    dilation, g3 = _geom(rng)
    if isinstance(padding, list) and rng.random() < 0.5 and all(isinstance(p, int) for p in padding):
        padding = [abs(p) - 1 if p in (1, 2, 3) else p for p in padding]  # padding 0 is the normal case
    ints = [v for g in (stride, padding, dilation) if isinstance(g, list) for v in g if isinstance(v, int)]
    odd = "odd" in (g1, g2, g3)
    huge = any(abs(v) >= 2**16 for v in ints)
    gen = torch.Generator().manual_seed(rng.getrandbits(31))
    shape = [rng.choice([0, 1, 2]), cin + rng.choice([0, 0, 0, -1, 1]), rng.choice([0, 1, 3, 7, 12]),
             rng.choice([0, 1, 3, 7, 12])]
    if rng.random() < 0.08:
        shape = shape[: rng.choice([2, 3])] if rng.random() < 0.5 else shape + [2]
    shape = [max(s, 0) for s in shape]
    xdtype = dtype if rng.random() < 0.9 else rng.choice([torch.float16, torch.int32, torch.float64, torch.float32])
    x = torch.randn(shape, generator=gen).to(xdtype)
    if x.dim() == 4 and rng.random() < 0.15:
        x = x.contiguous(memory_format=torch.channels_last)
    bias = torch.randn(cout, generator=gen).to(dtype) if rng.random() < 0.5 else None
    if bias is not None and rng.random() < 0.05:
        bias = bias[:-1] if rng.random() < 0.5 else bias.float() if dtype == torch.float64 else bias.double()
    desc = (f"{family} cin={cin} cout={cout} dtype={dtype} x={tuple(x.shape)}/{x.dtype} bias={bias is not None} "
            f"stride={stride} padding={padding} dilation={dilation} {' '.join(descs)}")
    tag = "op:" + ("huge-geom" if huge else "odd-geom" if odd else "args")
    ctx["tag"] = tag
    ctx["desc"] = desc
    try:
        if family == "op:validate":
            cin_arg = rng.choice([cin, cin, 0, -1, 2**62, 2**31, 1])
            desc += f" in_channels={cin_arg}"
            ctx["desc"] = desc
            msg = ops.validate(*arr, cin_arg)
            if not isinstance(msg, str):
                raise Outcome("accepted-wrong", "op:validate", f"validate returned {msg!r}")
            valid_here = _valid_arrays(arr, cin_arg)
            if (msg == "") != valid_here:
                raise Outcome("accepted-wrong", "op:validate", f"validate said {msg!r}, oracle says valid={valid_here}")
            return desc, "rejected" if msg else "accepted-correct", msg[:160]
        if family == "op:conv":
            out = ops.pattern_conv2d(x, *arr, bias, stride, padding, dilation)
        elif family == "op:grad-input":
            isz = list(shape) if rng.random() < 0.7 else rng.choice([[1, cin, 2**40, 2**40], [-1, cin, 5, 5],
                                                                      [1, cin, 5], [1, cin, 0, 5], [2**62, cin, 3, 3]])
            desc += f" input_size={isz}"
            oh = _out(isz, padding, dilation, stride, 2)
            ow = _out(isz, padding, dilation, stride, 3)
            go_shape = [isz[0] if len(isz) > 0 else 1, cout, oh, ow]
            go_shape = [min(max(int(v), 0), 64) for v in go_shape]
            go = torch.randn(go_shape, generator=gen).to(xdtype)
            desc += f" grad_output={tuple(go.shape)}"
            ctx["desc"] = desc
            out = ops.pattern_conv2d_grad_input(go, isz, *arr, stride, padding, dilation)
        else:
            oh = _out(shape, padding, dilation, stride, 2)
            ow = _out(shape, padding, dilation, stride, 3)
            go_shape = [shape[0] if shape else 1, cout, min(max(oh, 0), 64), min(max(ow, 0), 64)]
            go = torch.randn(go_shape, generator=gen).to(xdtype)
            desc += f" grad_output={tuple(go.shape)}"
            ctx["desc"] = desc
            out = ops.pattern_conv2d_grad_values(go, x, *arr, stride, padding, dilation)
    except Exception as e:
        _classify_exception(e, tag)
        return desc, "rejected", type(e).__name__ + ": " + str(e).splitlines()[0][:160]
    # accepted: must be a valid call, and match the float64 dense reference
    if _has_dup(arr):
        raise Outcome("accepted-wrong", "op:dup", "arrays with a duplicate (filter, channel) kernel accepted")
    if not _valid_arrays(arr, x.shape[1] if x.dim() == 4 else cin) or x.dim() != 4:
        raise Outcome("accepted-wrong", "op:invalid", "invalid arrays / input accepted")
    w = _dense_from_arrays(arr, x.shape[1])
    if family == "op:conv":
        ref = _ref_conv(x, w, bias, list(stride), list(padding), list(dilation))
        if ref is None:
            return desc, "accepted-correct", "(no reference for this geometry; output shape " + str(tuple(out.shape)) + ")"
        ok, why = _close(out, ref)
        if not ok:
            raise Outcome("accepted-wrong", tag, f"pattern_conv2d != float64 dense conv: {why}")
        return desc, "accepted-correct", ""
    if max(list(stride) + list(padding) + list(dilation)) >= 2**20:
        return desc, "accepted-correct", "(huge geometry: output shape only) " + str(tuple(out.shape))
    import torch.nn.functional as F
    xr = x.double().detach().requires_grad_(True) if family == "op:grad-values" else \
        torch.zeros(isz, dtype=torch.float64, requires_grad=True)
    wr = w.clone().requires_grad_(True)
    y = F.conv2d(F.pad(xr, (padding[1], padding[1], padding[0], padding[0])), wr, None, stride, 0, dilation)
    if tuple(y.shape) != tuple(go.shape):
        raise Outcome("accepted-wrong", tag, f"grad_output shape {tuple(go.shape)} accepted, conv output is {tuple(y.shape)}")
    gx, gw = torch.autograd.grad(y, (xr, wr), go.double())
    if family == "op:grad-input":
        ok, why = _close(out, gx)
    else:
        pats, fp, kc, kp, vals = arr
        counts = fp[1:].long() - fp[:-1].long()
        o = torch.repeat_interleave(torch.arange(fp.numel() - 1), counts)
        want = gw.reshape(gw.shape[0], gw.shape[1], 9)[o[:, None], kc.long()[:, None], pats.long()[kp.long()]]
        ok, why = _close(out, want)
    if not ok:
        raise Outcome("accepted-wrong", tag, f"{family} != autograd of F.conv2d: {why}")
    return desc, "accepted-correct", ""


def _out(size, padding, dilation, stride, axis):
    try:
        return (int(size[axis]) + 2 * int(padding[axis - 2]) - int(dilation[axis - 2]) * 2 - 1) // int(stride[axis - 2]) + 1
    except Exception:
        return 1


def _valid_arrays(arr, cin):
    """Oracle for validate: DESIGN.md's rules, written independently."""
    torch = _torch()
    pats, fp, kc, kp, vals = arr
    if (pats.dtype, fp.dtype, kc.dtype, kp.dtype) != (torch.uint8, torch.int32, torch.int32, torch.uint8):
        return False
    if pats.dim() != 2 or fp.dim() != 1 or kc.dim() != 1 or kp.dim() != 1 or vals.dim() != 2 or fp.numel() < 1:
        return False
    K, E = pats.shape
    nnz = kc.numel()
    if not (1 <= K <= 256 and 1 <= E <= 9) or kp.numel() != nnz or tuple(vals.shape) != (nnz, E) or cin < 0:
        return False
    for row in pats.tolist():
        if max(row) > 8 or len(set(row)) != len(row):
            return False
    f = fp.tolist()
    if f[0] != 0 or f[-1] != nnz or any(b < a for a, b in zip(f, f[1:])):
        return False
    if nnz and (int(kc.min()) < 0 or int(kc.max()) >= cin or int(kp.max()) >= K):
        return False
    return not _has_dup(arr)


def _run_module_input(rng, ctx):
    torch = _torch()
    family = rng.choice(["load:pattern", "load:pattern-q", "load:sparse-conv", "load:sparse-linear"])
    mod, cfg = _make_module(family, rng)
    from torch_patsparse.nn import SparseLinear
    cin = mod.in_features if isinstance(mod, SparseLinear) else mod.in_channels
    c = max(1, cin + rng.choice([-1, 1, 4]))
    x = _probe_input(mod, rng, channels=c)
    if rng.random() < 0.3 and x.dim() == 4:
        x = x[0] if rng.random() < 0.5 else x.unsqueeze(0)
    desc = ctx["desc"] = f"module:input {family} cfg={cfg} input {tuple(x.shape)}"
    try:
        import torch.nn.functional as F
        dense = mod.to_dense()
        try:
            dense(x)
            dense_ok = True
        except Exception:
            dense_ok = False
        out = mod(x)
    except Exception as e:
        _classify_exception(e, "module:input")
        return desc, "rejected", type(e).__name__ + ": " + str(e).splitlines()[0][:160]
    if not dense_ok:
        raise Outcome("accepted-wrong", "module:input-shape", f"ran on an input {tuple(x.shape)} that the dense layer rejects")
    ok, why = _close(out, dense.double()(x.double()))
    if not ok:
        raise Outcome("accepted-wrong", "module:input", why)
    del F
    return desc, "accepted-correct", ""


# ----------------------------------------------------------------------------------------------
# one case, a worker, the driver
# ----------------------------------------------------------------------------------------------
def case_family(seed, index):
    rng = random.Random(f"{seed}:{index}")
    names, weights = zip(*FAMILIES)
    return rng.choices(names, weights)[0], rng


def run_case(seed, index):
    """Runs one case in this process: dict(i, family, cls, tag, desc, detail)."""
    torch = _torch()
    import torch_patsparse  # noqa: F401  (registers the ops)
    family, rng = case_family(seed, index)
    torch.manual_seed(rng.getrandbits(31))
    ctx = _Ctx(desc=family, tag=family)
    cls, tag, detail = None, family, ""
    try:
        if family.startswith("load:"):
            _, cls, detail = _run_load(family, rng, ctx)
        elif family.startswith("op:"):
            _, cls, detail = _run_op(family, rng, ctx)
        else:
            _, cls, detail = _run_module_input(rng, ctx)
    except Outcome as o:
        cls, tag, detail = o.cls, o.tag, o.detail
    except Exception as e:  # the harness itself failed building the case: report, never hide
        cls, tag, detail = "wrong-exception", "harness", f"{type(e).__name__}: {e} " + traceback.format_exc(limit=3)[-400:]
    desc = ctx["desc"]
    return {"i": index, "family": family, "cls": cls, "tag": tag, "desc": desc[:600], "detail": str(detail)[:400]}


def _worker(seed, start, stop, mem_gb):
    import resource
    if mem_gb:
        lim = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))  # a huge allocation fails instead of swapping
    torch = _torch()
    torch.set_num_threads(1)
    import torch_patsparse  # noqa: F401
    _Ctx.emit = lambda c: print(json.dumps({"ctx": c}), flush=True)
    crash_at = os.environ.get("PATSPARSE_FUZZ_CRASH_AT")  # tests: prove a dying worker is counted
    for i in range(start, stop):
        print(json.dumps({"start": i}), flush=True)
        if crash_at == str(i):
            import signal
            os.kill(os.getpid(), signal.SIGSEGV)
        print(json.dumps(run_case(seed, i)), flush=True)


def _spawn(seed, start, stop, mem_gb, env):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--seed", str(seed), "--start", str(start),
           "--stop", str(stop), "--mem-gb", str(mem_gb)]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env, text=True)


def run(seed=0, cases=300, batch=250, case_timeout=60.0, mem_gb=6.0, progress=False):
    """Runs cases [0, cases) of ``seed`` in worker subprocesses; returns {"counts", "results", "seconds"}."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    results = {}
    t0 = time.time()
    next_i = 0
    while next_i < cases:
        stop = min(cases, next_i + batch)
        proc = _spawn(seed, next_i, stop, mem_gb, env)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        current, ctx, last_event = None, {}, time.time()
        hung = False
        while True:
            if not sel.select(timeout=1.0):
                if current is not None and time.time() - last_event > case_timeout:
                    proc.kill()
                    hung = True
                    break
                if proc.poll() is not None:
                    break
                continue
            line = proc.stdout.readline()
            if not line:
                break
            last_event = time.time()
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if "ctx" in msg:
                ctx = msg["ctx"]
            elif "start" in msg:
                current, ctx = msg["start"], {}
            else:
                results[msg["i"]] = msg
                current = None
                if progress and len(results) % 500 == 0:
                    print(f"  {len(results)}/{cases} cases, {time.time() - t0:.0f} s", file=sys.stderr, flush=True)
        proc.wait()
        stderr = proc.stderr.read()
        sel.close()
        # Reports only: ASan's "WARNING: failed to allocate" (allocator_may_return_null=1) is the
        # clean bad_alloc path, and "hard rss limit exhausted" is the fuzz's own memory cap.
        report = [ln for ln in stderr.splitlines() if "runtime error:" in ln or "ERROR: AddressSanitizer" in ln
                  or "ERROR: LeakSanitizer" in ln][:1]
        sanitizer = bool(report)
        over_cap = "hard rss limit exhausted" in stderr
        if current is not None:  # died or hung inside this case
            family, _ = case_family(seed, current)
            cls = "hang" if hung else "sanitizer" if sanitizer else "rejected" if over_cap else "crash"
            tail = report or (["over the fuzz's memory cap (ASAN hard_rss_limit_mb)"] if over_cap else
                              stderr.strip().splitlines()[-3:] if stderr.strip() else [])
            results[current] = {"i": current, "family": family, "cls": cls, "tag": ctx.get("tag", family),
                                "desc": ctx.get("desc", family)[:600],
                                "detail": f"exit {proc.returncode}; " + " | ".join(tail)[-300:]}
            next_i = current + 1
        elif sanitizer:  # a report after the last case finished (e.g. leaks at exit)
            results[stop - 1]["cls"], results[stop - 1]["detail"] = "sanitizer", stderr[-300:]
            next_i = stop
        else:
            missing = [i for i in range(next_i, stop) if i not in results]
            next_i = missing[0] if missing else stop
            if missing and proc.returncode == 0:
                raise RuntimeError(f"worker finished without running case {missing[0]}: {stderr[-500:]}")
    counts = collections.Counter(r["cls"] for r in results.values())
    return {"counts": counts, "results": [results[i] for i in sorted(results)], "seconds": time.time() - t0}


def failures(report):
    return [r for r in report["results"] if r["cls"] in BAD]


def summary_table(report, seed, cases):
    c = report["counts"]
    cols = ["crash", "hang", "sanitizer", "accepted-wrong", "rejected-dirty", "wrong-exception", "rejected",
            "accepted-correct"]
    head = "| " + " | ".join(["cases"] + cols) + " |"
    sep = "|" + "---:|" * (len(cols) + 1)
    row = "| " + " | ".join([str(cases)] + [str(c.get(k, 0)) for k in cols]) + " |"
    return "\n".join([head, sep, row])


def defect_lines(report, seed, limit_per_tag=2):
    """One line per (class, tag), with how many cases and up to two reproducers."""
    groups = collections.OrderedDict()
    for r in failures(report):
        groups.setdefault((r["cls"], r["tag"]), []).append(r)
    lines = []
    for (cls, tag), rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        lines.append(f"{cls:16s} {tag:28s} {len(rs):5d} cases")
        for r in rs[:limit_per_tag]:
            lines.append(f"    python benchmarks/fuzz.py --seed {seed} --case {r['i']} -v   # {r['desc'][:220]}")
            lines.append(f"        -> {r['detail'][:220]}")
    return lines


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cases", type=int, default=1000)
    p.add_argument("--batch", type=int, default=250, help="cases per worker process")
    p.add_argument("--case-timeout", type=float, default=60.0)
    p.add_argument("--mem-gb", type=float, default=6.0, help="address-space limit of a worker (0: none)")
    p.add_argument("--case", type=int, help="run this one case in-process and print it")
    p.add_argument("-v", action="store_true")
    p.add_argument("--json", help="write every result to this file")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--stop", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    sys.path.insert(0, ROOT)
    if a.worker:
        _worker(a.seed, a.start, a.stop, a.mem_gb)
        return 0
    if a.case is not None:
        r = run_case(a.seed, a.case)
        print(json.dumps(r, indent=2) if a.v else f"{r['cls']} [{r['tag']}] {r['detail'][:200]}")
        return 0 if r["cls"] in GOOD else 1
    report = run(a.seed, a.cases, a.batch, a.case_timeout, a.mem_gb, progress=True)
    print(f"fuzz: seed {a.seed}, {a.cases} cases, {report['seconds']:.0f} s")
    print(summary_table(report, a.seed, a.cases))
    fam = collections.Counter(r["family"] for r in report["results"])
    print("families: " + ", ".join(f"{k} {v}" for k, v in sorted(fam.items())))
    lines = defect_lines(report, a.seed)
    print("\n".join(["", "failures by class and tag:"] + lines) if lines else "\nno failures")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": a.seed, "cases": a.cases, "counts": dict(report["counts"]),
                       "results": report["results"]}, f)
    return 1 if lines else 0


if __name__ == "__main__":
    sys.exit(main())
