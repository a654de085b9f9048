"""torch_patsparse: pattern-based pruning for PyTorch CNNs, with native kernels that make the
sparsity pay off (x86 AVX2/AVX-512, ARM NEON, CUDA).

    import torch_patsparse as ps
    opt = ps.ADMM([...], base=torch.optim.SGD, lr=0.05)   # train with constraints
    model = ps.convert(model)                              # 3x3 convs -> PatternConv2d
    print(ps.compression_report(model))
"""
from . import ops
from . import project
from .patterns import PatternSet
from . import nn
from .convert import convert, load_compressed
from .report import compression_report
from . import export
from . import constraints
from . import select
from .admm import ADMM
from .compressed_training import compressed_training
from .optimize import optimize_for_inference
from .train import Distillation, distillation_loss
from . import models

__version__ = "0.1.0"

__all__ = ["ops", "project", "PatternSet", "nn", "convert", "load_compressed", "compression_report", "export",
           "constraints", "select", "ADMM", "compressed_training", "optimize_for_inference", "Distillation",
           "distillation_loss", "models"]
