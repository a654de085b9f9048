"""Writes tests/data/checkpoints_v0.pt with the code at commit cea831a (before issue 12's quant.py)."""
import torch
from torch import nn
import torch_patsparse as ps
import sys
sys.path.insert(0, "tests")
from helpers import PATTERNS8, random_pattern_weight

torch.manual_seed(0)
out = {}
def pconv(name, cin, cout, bits=None, scheme="uniform", pre_quant=None, **kw):
    conv = nn.Conv2d(cin, cout, 3, **kw)
    with torch.no_grad():
        w = random_pattern_weight(cout, cin, keep=0.5, seed=len(out))
        if pre_quant:
            w = ps.project.quantize(w, *pre_quant)
        conv.weight.copy_(w)
    m = ps.nn.PatternConv2d.from_dense(conv, ps.PatternSet(PATTERNS8), bits=bits, scheme=scheme)
    x = torch.randn(1, cin, 7, 6)
    out[name] = {"kind": "PatternConv2d", "args": dict(in_channels=cin, out_channels=cout, stride=conv.stride[0],
                 padding=conv.padding[0], bias=conv.bias is not None, bits=m.bits, scheme=m.scheme),
                 "state_dict": m.state_dict(), "x": x, "y": m(x).detach(), "dense": m.dense_weight().detach(),
                 "source": conv.weight.detach().clone(), "build": dict(bits=bits, scheme=scheme)}

pconv("pattern_fp32", 6, 8, padding=1)
pconv("pattern_u4", 8, 8, bits=4)
pconv("pattern_pow2_3", 5, 7, bits=3, scheme="pow2", stride=2, bias=False)
pconv("pattern_b1", 4, 4, bits=1)
pconv("pattern_auto3", 6, 6, pre_quant=(3, "uniform"))

def sparse(name, mod, src, build):
    from torch_patsparse.nn import sparse as sp
    kind = type(mod).__name__
    if kind == "SparseLinear":
        args = dict(in_features=mod.in_features, out_features=mod.out_features, bias=mod.bias is not None)
        x = torch.randn(3, mod.in_features)
    else:
        args = dict(in_channels=mod.in_channels, out_channels=mod.out_channels, kernel_size=mod.kernel_size,
                    stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=mod.groups,
                    bias=mod.bias is not None)
        x = torch.randn(2, mod.in_channels, 8, 8)
    out[name] = {"kind": kind, "args": args, "state_dict": mod.state_dict(), "x": x, "y": mod(x).detach(),
                 "dense": mod.dense_weight().detach(),
                 "source": src.weight.detach().clone(), "build": build}

g = torch.Generator().manual_seed(5)
lin = nn.Linear(20, 6)
with torch.no_grad():
    lin.weight.mul_(torch.rand(6, 20, generator=g) < 0.2)
sparse("linear_fp32", ps.nn.SparseLinear.from_dense(lin), lin, dict(bits=None, scheme="uniform"))
sparse("linear_u3", ps.nn.SparseLinear.from_dense(lin, bits=3), lin, dict(bits=3, scheme="uniform"))
sparse("linear_b1", ps.nn.SparseLinear.from_dense(lin, bits=1), lin, dict(bits=1, scheme="uniform"))
conv = nn.Conv2d(4, 6, 5, padding=2)
with torch.no_grad():
    conv.weight.mul_(torch.rand(conv.weight.shape, generator=g) < 0.1)
sparse("conv5_pow2_4", ps.nn.SparseConv2d.from_dense(conv, bits=4, scheme="pow2"), conv, dict(bits=4, scheme="pow2"))
sparse("conv5_u8", ps.nn.SparseConv2d.from_dense(conv, bits=8), conv, dict(bits=8, scheme="uniform"))
conv1 = nn.Conv2d(8, 4, 1, groups=2, bias=False)
with torch.no_grad():
    conv1.weight.copy_(ps.project.quantize(conv1.weight * (torch.rand(conv1.weight.shape, generator=g) < 0.3), 2))
sparse("conv1_auto2", ps.nn.SparseConv2d.from_dense(conv1), conv1, dict(bits=None, scheme="uniform"))
for k, v in out.items():
    print(k, v["args"], {n: (tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t for n, t in v["state_dict"].items()})
torch.save(out, "tests/data/checkpoints_v0.pt")
