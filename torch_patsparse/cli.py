"""The main job: ``python -m torch_patsparse`` / ``patsparse``.

Compresses a VGG-style CNN on Fashion-MNIST end to end and shows what it achieved::

    dense      train the dense baseline (SGD, cosine LR)
    admm       ADMM phase: pattern + connectivity + 4-bit on the 3x3 convs, unstructured + 4-bit on FC
    retrain    hard prune, then masked retraining (cosine LR)
    convert    ps.convert -> PatternConv2d layers; accuracy of the converted model
    report     ps.compression_report, latency dense vs compressed, TorchScript file, plot, summary

A checkpoint is written after every epoch (OUT/checkpoint.pt) and after every stage
(OUT/<stage>.pt); ``--resume`` continues from OUT/checkpoint.pt with nothing lost (model,
optimizer incl. ADMM state, LR schedule, RNG states, stage and epoch).
"""
import argparse
import contextlib
import copy
import fnmatch
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import torch

STAGES = ("dense", "admm", "retrain", "convert", "report")
# configuration keys each stage depends on (a later stage may start from an earlier stage's file
# written with a different configuration for the later stages)
STAGE_CONFIG = {"dense": ("model", "seed", "batch_size", "train_limit", "test_limit", "dense"),
                "admm": ("admm", "layers"), "retrain": ("retrain",), "convert": (), "report": ("latency",)}
CKPT_VERSION = 1

# Built-in defaults; configs/default.toml holds the same values (a test keeps them in sync).
# admm.method is "oneshot": in benchmarks/admm_vs_baselines.py (BENCHMARKS.md) ADMM did not beat
# one-shot projection + masked retraining at any setting, so the default is the method that won;
# --method admm runs the ADMM phase with the rho settings below.
DEFAULTS: Dict[str, Any] = {
    "model": "fmnist_vgg",
    "seed": 0,
    "threads": 2,
    "batch_size": 256,
    "dense": {"epochs": 3, "lr": 0.05, "momentum": 0.9, "weight_decay": 5e-4},
    "admm": {"method": "oneshot", "epochs": 2, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4, "rho": 0.01,
             "rho_growth": "auto", "rho_max": 2.0, "updates_per_epoch": 4, "balance": False, "penalty": "proximal"},
    "retrain": {"epochs": 4, "lr": 0.02, "on": "compressed"},
    "latency": {"batches": [1, 64], "repeats": 30},
    "layers": [
        {"match": "features.0.weight",
         "constraints": [{"type": "pattern", "k": 8}, {"type": "quantize", "bits": 4}]},
        {"match": "features.*.weight",
         "constraints": [{"type": "pattern", "k": 8}, {"type": "connectivity", "keep": 0.24},
                         {"type": "quantize", "bits": 4}]},
        {"match": "classifier.*.weight",
         "constraints": [{"type": "unstructured", "keep": 0.2}, {"type": "quantize", "bits": 4}]},
    ],
}
# --quick: a subset of the data and two epochs per stage (about 1.5 minutes on 2 cores); the
# constraint phase keeps the main job's settings (proximal ADMM's rho is per Z-interval, so it
# needs no retuning for a shorter phase).
QUICK = {"train_limit": 8000, "test_limit": 2000, "dense": {"epochs": 2},
         "admm": {"epochs": 2},
         "retrain": {"epochs": 2}, "latency": {"repeats": 10}}

METHODS = ("admm", "oneshot", "gradual")  # torch_patsparse.admm.METHODS (not imported: keeps --help light)
PENALTIES = ("gradient", "proximal")  # torch_patsparse.admm.PENALTIES
# masked retraining (every epoch after the hard prune) on the dense model with masks, or through the
# compressed modules (ps.compressed_training: same result to rounding)
RETRAIN_ON = ("dense", "compressed")


class ConfigError(ValueError):
    pass


# ---------------------------------------------------------------------------------------- config
def _merge(base: Dict[str, Any], over: Dict[str, Any], where: str = "") -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if key not in base:
            known = ", ".join(sorted(base))
            raise ConfigError(f"unknown config key '{where}{key}' (known keys{' in [' + where[:-1] + ']' if where else ''}: "
                              f"{known})")
        if isinstance(base[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config key '{where}{key}' must be a table, got {value!r}")
            out[key] = _merge(base[key], value, f"{where}{key}.")
        else:
            out[key] = copy.deepcopy(value)
    return out


def read_config_file(path: str) -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} not found")
    low = path.lower()
    try:
        if low.endswith((".yaml", ".yml")):
            import yaml
            with open(path) as f:
                cfg = yaml.safe_load(f) or {}
        elif low.endswith(".json"):
            with open(path) as f:
                cfg = json.load(f)
        else:
            try:
                import tomllib
            except ImportError:  # Python < 3.11
                import tomli as tomllib  # type: ignore
            with open(path, "rb") as f:
                cfg = tomllib.load(f)
    except ConfigError:
        raise
    except Exception as e:  # parse errors of any of the three formats
        raise ConfigError(f"cannot parse config file {path!r}: {e}") from e
    if not isinstance(cfg, dict):
        raise ConfigError(f"config file {path!r} must hold a table/mapping at top level")
    return cfg


def build_config(path: Optional[str] = None, quick: bool = False,
                 overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """DEFAULTS <- QUICK (if quick) <- config file <- command-line overrides; validated."""
    base = copy.deepcopy(DEFAULTS)
    base.update({"train_limit": None, "test_limit": None})
    cfg = _merge(base, QUICK) if quick else base
    if path:
        cfg = _merge(cfg, read_config_file(path))
    if overrides:
        cfg = _merge(cfg, overrides)
    validate_config(cfg)
    return cfg


def _check_number(cfg, key, cond, what):
    section, _, name = key.partition(".")
    v = cfg[section][name] if name else cfg[section]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not cond(v):
        raise ConfigError(f"config '{key}' must be {what}, got {v!r}")


def validate_config(cfg: Dict[str, Any]) -> None:
    if cfg["model"] != "fmnist_vgg":
        raise ConfigError(f"config 'model' must be 'fmnist_vgg' (the only built-in model), got {cfg['model']!r}")
    if cfg["admm"]["method"] not in METHODS:
        raise ConfigError(f"config 'admm.method' must be one of {', '.join(METHODS)}, got {cfg['admm']['method']!r}")
    if cfg["retrain"]["on"] not in RETRAIN_ON:
        raise ConfigError(f"config 'retrain.on' must be one of {', '.join(RETRAIN_ON)}, got {cfg['retrain']['on']!r}")
    if cfg["admm"]["penalty"] not in PENALTIES:
        raise ConfigError(f"config 'admm.penalty' must be one of {', '.join(PENALTIES)}, "
                          f"got {cfg['admm']['penalty']!r}")
    if not isinstance(cfg["admm"]["balance"], bool):
        raise ConfigError(f"config 'admm.balance' must be true or false, got {cfg['admm']['balance']!r}")
    for key in ("dense.epochs", "admm.epochs", "retrain.epochs"):
        _check_number(cfg, key, lambda v: isinstance(v, int) and v >= 0, "an int >= 0")
    for key in ("batch_size", "threads", "admm.updates_per_epoch", "latency.repeats"):
        _check_number(cfg, key, lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
    for key in ("dense.lr", "admm.lr", "retrain.lr", "admm.rho"):
        _check_number(cfg, key, lambda v: v > 0 and math.isfinite(v), "a positive number")
    if cfg["admm"]["rho_growth"] != "auto":
        _check_number(cfg, "admm.rho_growth", lambda v: v >= 1 and math.isfinite(v), 'a number >= 1 or "auto"')
    _check_number(cfg, "admm.rho_max", lambda v: v >= cfg["admm"]["rho"] and math.isfinite(v),
                  f"a number >= admm.rho ({cfg['admm']['rho']})")
    for key in ("train_limit", "test_limit"):
        if cfg[key] is not None:
            _check_number(cfg, key, lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
    if not isinstance(cfg["latency"]["batches"], list) or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in cfg["latency"]["batches"]):
        raise ConfigError(f"config 'latency.batches' must be a list of ints >= 1, got {cfg['latency']['batches']!r}")
    layers = cfg["layers"]
    if not isinstance(layers, list):
        raise ConfigError("config 'layers' must be a list of {match = ..., constraints = [...]} tables")
    for i, rule in enumerate(layers):
        if not isinstance(rule, dict) or set(rule) - {"match", "constraints"} or "match" not in rule:
            raise ConfigError(f"config layers[{i}] must be a table with keys 'match' (a glob over parameter "
                              f"names) and 'constraints' (a list), got {rule!r}")
        if not isinstance(rule["match"], str) or not rule["match"]:
            raise ConfigError(f"config layers[{i}].match must be a non-empty string, got {rule['match']!r}")
        cons = rule.get("constraints", [])
        if not isinstance(cons, list):
            raise ConfigError(f"config layers[{i}].constraints must be a list, got {cons!r}")
        for c in cons:
            make_constraint(c, f"layers[{i}] ({rule['match']})")


def make_constraint(spec, where: str = "?"):
    """{"type": "pattern", "k": 8} -> C.Pattern(k=8) (constraints.from_spec), errors as ConfigError."""
    from . import constraints as C
    try:
        return C.from_spec(spec)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


def resolve_layers(model: torch.nn.Module, rules: List[Dict[str, Any]]):
    """Assign every parameter to the first rule whose glob matches its name (1-D parameters are
    never constrained). Returns ``[(rule index, [(name, param), ...], [constraints])]`` for the
    rules that matched something, plus ``[(name, param)]`` for the unconstrained rest. A rule that
    matches no parameter, or a constraint that does not fit a parameter, is a ConfigError."""
    groups = [[] for _ in rules]
    rest = []
    for name, p in model.named_parameters():
        for i, rule in enumerate(rules):
            if p.dim() >= 2 and fnmatch.fnmatchcase(name, rule["match"]):
                groups[i].append((name, p))
                break
        else:
            rest.append((name, p))
    out = []
    names = [n for n, p in model.named_parameters() if p.dim() >= 2]
    for i, (rule, members) in enumerate(zip(rules, groups)):
        if not members:
            raise ConfigError(f"config layers[{i}].match {rule['match']!r} matches no (multi-dimensional) parameter "
                              f"that an earlier rule did not take; parameters: {', '.join(names)}")
        cons = [make_constraint(c, f"layers[{i}] ({rule['match']})") for c in rule.get("constraints", [])]
        for c in cons:
            for name, p in members:
                try:
                    c.check_tensor(p.shape, name)
                except ValueError as e:
                    raise ConfigError(f"config layers[{i}] ({rule['match']}): {e}") from e
        if cons:
            out.append((i, members, cons))
        else:
            rest.extend(members)
    return out, rest


# ---------------------------------------------------------------------------------------- job
def _shaping(cfg: Dict[str, Any], key: str):
    """cfg[key] without the settings that do not shape the trained model (retrain.on: to rounding)."""
    v = cfg.get(key)
    return {k: x for k, x in v.items() if k != "on"} if key == "retrain" and isinstance(v, dict) else v


class Job:
    """State of one run: model, optimizer, scheduler, RNG, history; knows how to checkpoint."""

    def __init__(self, cfg: Dict[str, Any], args):
        from . import data as D
        from .models import fmnist_vgg
        self.cfg, self.args = cfg, args
        self.out = args.out
        os.makedirs(self.out, exist_ok=True)
        self.show = not args.no_progress
        torch.set_num_threads(cfg["threads"])
        torch.manual_seed(cfg["seed"])
        self.gen = torch.Generator().manual_seed(cfg["seed"])
        data_dir = args.data or D.default_dir()
        self.x_train, self.y_train = D.load_split("train", data_dir, cfg["train_limit"])
        self.x_test, self.y_test = D.load_split("test", data_dir, cfg["test_limit"])
        self.model = fmnist_vgg()
        self.opt = None
        self.sched = None
        self.stage = None         # stage in progress (or last finished when epoch == its epoch count)
        self.epoch = 0            # epochs finished in self.stage
        self.done: List[str] = []
        self.history: Dict[str, Any] = {"epochs": [], "acc": {}}
        self.converted = None     # the converted model (after the convert stage)
        self.interrupt_after = args.interrupt_after
        self.epochs_run = 0

    # ---------------- optimizers
    def steps_per_epoch(self) -> int:
        return max(1, math.ceil(self.x_train.shape[0] / self.cfg["batch_size"]))

    def make_dense_opt(self):
        c = self.cfg["dense"]
        self.opt = torch.optim.SGD(self.model.parameters(), lr=c["lr"], momentum=c["momentum"],
                                   weight_decay=c["weight_decay"])
        total = max(1, c["epochs"] * self.steps_per_epoch())
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)

    def make_admm_opt(self):
        from .admm import ADMM
        c = self.cfg["admm"]
        groups, rest = resolve_layers(self.model, self.cfg["layers"])
        params = [{"params": [p for _, p in members], "names": [n for n, _ in members], "constraints": cons}
                  for _, members, cons in groups]
        if rest:
            params.append({"params": [p for _, p in rest], "names": [n for n, _ in rest]})
        update_every = max(1, self.steps_per_epoch() // c["updates_per_epoch"])
        # the constraint phase: ADMM, gradual pruning (keep decays over the phase), or one-shot (pruned
        # when the stage starts: its epochs are masked training, so every method gets the same epochs)
        self.opt = ADMM(params, base=torch.optim.SGD, method=c["method"],
                        phase_steps=max(1, c["epochs"] * self.steps_per_epoch()),
                        rho=c["rho"], rho_growth=None if c["rho_growth"] == "auto" else c["rho_growth"], rho_max=c["rho_max"], balance=c["balance"], penalty=c["penalty"],
                        update_every=update_every, lr=c["lr"], momentum=c["momentum"],
                        weight_decay=c["weight_decay"])
        self.sched = None

    def start_retrain(self):
        """Hard prune (fixed masks / levels from here on), fresh cosine LR schedule."""
        from .train import recalibrate_bn
        c = self.cfg["retrain"]
        self.opt.hard_prune()
        recalibrate_bn(self.model, self.x_train, self.cfg["batch_size"], show=self.show)
        for g in self.opt.param_groups:
            g["lr"] = c["lr"]
            g["initial_lr"] = c["lr"]
        self.sched = self.retrain_sched()

    def retrain_sched(self):
        total = max(1, self.cfg["retrain"]["epochs"] * self.steps_per_epoch())
        return torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=total)

    # ---------------- checkpoints
    def state(self) -> Dict[str, Any]:
        return {
            "version": CKPT_VERSION, "config": self.cfg, "stage": self.stage, "epoch": self.epoch,
            "done": list(self.done), "history": self.history,
            "model": self.model.state_dict(),
            "opt_kind": None if self.opt is None else type(self.opt).__name__,
            "opt": None if self.opt is None else self.opt.state_dict(),
            "sched": None if self.sched is None else self.sched.state_dict(),
            "converted": None if self.converted is None else self.converted.state_dict(),
            "rng": torch.get_rng_state(), "gen": self.gen.get_state(),
        }

    def save(self, stage_file: Optional[str] = None) -> None:
        st = self.state()
        for name in ["checkpoint"] + ([stage_file] if stage_file else []):
            path = os.path.join(self.out, name + ".pt")
            tmp = path + ".tmp"
            torch.save(st, tmp)
            os.replace(tmp, path)   # atomic: an interrupted save never leaves a broken checkpoint

    def load(self, path: str, finished_stage: Optional[str] = None) -> None:
        """Restore a checkpoint. ``finished_stage``: ``path`` is that stage's file and the run goes on
        with the next stage, so only the configuration that shaped the stages up to it must match
        (e.g. one dense baseline can start ADMM runs with different constraints)."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no checkpoint at {path}")
        st = torch.load(path, map_location="cpu", weights_only=False)
        if st.get("version") != CKPT_VERSION:
            raise ValueError(f"{path}: checkpoint version {st.get('version')} is not {CKPT_VERSION}")
        # everything that shapes the trained model must match (latency / thread settings may differ)
        keys = set(st["config"]) | set(self.cfg)
        if finished_stage is not None:
            keys &= {k for s in STAGES[:STAGES.index(finished_stage) + 1] for k in STAGE_CONFIG[s]}
        diff = [k for k in keys if k not in ("latency", "threads") and _shaping(st["config"], k) != _shaping(self.cfg, k)]
        if diff:
            raise ValueError(f"{path} was written with a different configuration (keys {sorted(diff)}); "
                             f"resume with the same --config/--quick options, or use another --out")
        self.stage, self.epoch, self.done, self.history = st["stage"], st["epoch"], st["done"], st["history"]
        self.model.load_state_dict(st["model"])
        self.opt = self.sched = None
        # optimizer and scheduler objects first (a new scheduler touches the LRs), then their states
        if st["opt_kind"] == "SGD":
            self.make_dense_opt()
        elif st["opt_kind"] == "ADMM":
            self.make_admm_opt()
            if st["sched"] is not None:
                self.sched = self.retrain_sched()
        if self.opt is not None:
            self.opt.load_state_dict(st["opt"])
        if self.sched is not None:
            self.sched.load_state_dict(st["sched"])
        if st["converted"] is not None:
            self.converted = self.convert_model()
            self.converted.load_state_dict(st["converted"])
        torch.set_rng_state(st["rng"])
        self.gen.set_state(st["gen"])

    # ---------------- stages
    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def evaluate(self, model=None, desc="eval") -> float:
        from .train import evaluate
        return evaluate(self.model if model is None else model, self.x_test, self.y_test, desc=desc, show=self.show)["acc"]

    def run_epochs(self, stage: str, epochs: int) -> None:
        from .train import train_epoch
        while self.epoch < epochs:
            t0, c0 = time.time(), time.process_time()
            with self.training_form():
                stats = train_epoch(self.model, self.opt, self.x_train, self.y_train, self.cfg["batch_size"],
                                    self.gen, desc=f"{stage} {self.epoch + 1}/{epochs}", scheduler=self.sched,
                                    show=self.show)
            acc = self.evaluate(desc=f"{stage} eval")
            self.epoch += 1
            rec = {"stage": stage, "epoch": self.epoch, "train_loss": stats["loss"], "train_acc": stats["acc"],
                   "test_acc": acc, "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
            line = (f"[{stage} {self.epoch}/{epochs}] loss {stats['loss']:.4f} train {stats['acc']:.2f}% "
                    f"test {acc:.2f}%  ({rec['seconds']:.0f}s wall, {rec['cpu_seconds']:.0f}s CPU)")
            if stage == "admm" and self.opt.phase != "retrain":
                res = self.opt.residuals()
                rec["residual_max"] = max(res.values()) if res else 0.0
                line += f"  max residual {rec['residual_max']:.4f}"
            self.history["epochs"].append(rec)
            self.log(line)
            self.save()
            self.epochs_run += 1
            if self.interrupt_after is not None and self.epochs_run >= self.interrupt_after:
                raise Interrupted(f"stopping after {self.epochs_run} epoch(s) as asked (--interrupt-after)")

    def training_form(self):
        """Masked retraining through the compressed modules when asked (retrain.on); checkpoints and
        evaluation always see the dense form."""
        from .admm import ADMM
        if self.cfg["retrain"]["on"] == "compressed" and isinstance(self.opt, ADMM) and self.opt.phase == "retrain":
            from .compressed_training import compressed_training
            return compressed_training(self.model, self.opt)
        return contextlib.nullcontext()

    def begin(self, stage: str) -> bool:
        """Enter ``stage``; True when it starts fresh (False: resuming inside it)."""
        if self.stage == stage:
            return False
        self.stage, self.epoch = stage, 0
        return True

    def finish(self, stage: str) -> None:
        self.done.append(stage)
        self.save(stage_file=stage)

    def stage_dense(self) -> None:
        if self.begin("dense"):
            self.make_dense_opt()
        self.run_epochs("dense", self.cfg["dense"]["epochs"])
        self.history["acc"]["dense"] = self.evaluate(desc="dense eval")
        self.log(f"dense baseline: {self.history['acc']['dense']:.2f}% top-1")
        self.finish("dense")

    def stage_admm(self) -> None:
        if self.begin("admm"):
            self.make_admm_opt()
            if self.cfg["admm"]["method"] == "oneshot":  # prune before the first forward pass
                from .train import recalibrate_bn
                self.opt.hard_prune()
                recalibrate_bn(self.model, self.x_train, self.cfg["batch_size"], show=self.show)
                self.history["acc"]["oneshot_pruned"] = self.evaluate(desc="one-shot pruned eval")
                self.log(f"one-shot prune: {self.history['acc']['oneshot_pruned']:.2f}% (BN re-estimated)")
        self.run_epochs("admm", self.cfg["admm"]["epochs"])
        res = self.opt.residuals()
        self.history["residuals"] = {k: float(v) for k, v in res.items()}
        self.history["acc"]["admm"] = self.evaluate(desc="admm eval")
        # The running BatchNorm statistics lag weights that the penalty still moves fast; the same
        # weights with re-estimated statistics (on a copy) say more about what ADMM reached.
        from .train import recalibrate_bn
        probe = copy.deepcopy(self.model)
        recalibrate_bn(probe, self.x_train, self.cfg["batch_size"], show=self.show)
        self.history["acc"]["admm_bn"] = self.evaluate(probe, desc="admm eval (BN re-estimated)")
        self.log(f"after ADMM: {self.history['acc']['admm']:.2f}% with the running BN statistics, "
                 f"{self.history['acc']['admm_bn']:.2f}% with BN re-estimated (max residual "
                 f"{max(res.values()) if res else 0:.4f})")
        self.finish("admm")

    def stage_retrain(self) -> None:
        if self.begin("retrain"):
            self.start_retrain()
            self.history["acc"]["hard_pruned"] = self.evaluate(desc="hard-pruned eval")
            self.log(f"after hard prune: {self.history['acc']['hard_pruned']:.2f}%")
        self.run_epochs("retrain", self.cfg["retrain"]["epochs"])
        self.history["acc"]["retrain"] = self.evaluate(desc="retrain eval")
        self.log(f"after masked retraining: {self.history['acc']['retrain']:.2f}%")
        self.finish("retrain")

    def pattern_sets_by_name(self) -> Dict[str, Any]:
        """Parameter name -> the PatternSet its ADMM group trained with."""
        out = {}
        if self.opt is None or not hasattr(self.opt, "pattern_sets"):
            return out
        for g, pset in zip(self.opt.param_groups, self.opt.pattern_sets()):
            if pset is not None:
                for n in g.get("names", []):
                    out[n] = pset
        return out

    def convert_model(self) -> torch.nn.Module:
        """Copy of the (retrained) model converted with ``ps.convert``: 3x3 convs become
        PatternConv2d, each with the pattern set its ADMM group trained with; with
        ``torch_patsparse.nn.sparse`` available, the other constrained layers (FC) are stored
        sparse + k-bit too."""
        from .convert import convert
        psets = {name[:-len(".weight")]: pset for name, pset in self.pattern_sets_by_name().items()
                 if name.endswith(".weight")}
        modules = dict(self.model.named_modules())
        psets = {k: v for k, v in psets.items() if k in modules}
        # 3x3 convs -> PatternConv2d; the other constrained layers (FC) -> sparse k-bit modules;
        # layers no rule constrains stay dense (excluded, so convert has nothing to warn about)
        exclude = []
        if hasattr(self.opt, "pattern_sets"):  # ADMM: its groups say which layers were constrained
            constrained = {n for g in self.opt.param_groups if g.get("constraints") for n in g.get("names", [])}
            exclude = [name for name, m in modules.items()
                       if name and isinstance(getattr(m, "weight", None), torch.nn.Parameter)
                       and f"{name}.weight" not in constrained]
        return convert(self.model, pattern_set=psets, layers="all", exclude=exclude).eval()

    def stage_convert(self) -> None:
        self.begin("convert")
        self.model.eval()
        self.converted = self.convert_model()
        with torch.no_grad():
            x = self.x_test[:256]
            diff = (self.converted(x) - self.model(x)).abs().max().item()
        self.history["convert_max_logit_diff"] = diff
        self.history["acc"]["compressed"] = self.evaluate(self.converted, desc="compressed eval")
        self.log(f"converted model: {self.history['acc']['compressed']:.2f}% "
                 f"(max |logit diff| vs masked dense model: {diff:.2e})")
        self.finish("convert")

    def stage_report(self) -> None:
        from . import compression_report
        from .train import latency
        self.begin("report")
        dense = self.model.eval()
        comp = self.converted.eval()
        report = compression_report(comp, input_size=(1, 1, 28, 28))
        self.history["report_totals"] = report.totals
        self.log(str(report))
        lat_cfg = self.cfg["latency"]
        gen = torch.Generator().manual_seed(1)
        inputs = [torch.randn(b, 1, 28, 28, generator=gen) for b in lat_cfg["batches"]]
        lat = latency({"dense": dense, "compressed": comp}, inputs, repeats=lat_cfg["repeats"], show=self.show)
        self.history["latency_ms"] = lat
        ts_path = os.path.join(self.out, "model_compressed.pt")
        try:
            from .export import torchscript
            torchscript(comp, ts_path)
            loaded = torch.jit.load(ts_path)
            with torch.no_grad():
                ts_diff = (loaded(self.x_test[:64]) - comp(self.x_test[:64])).abs().max().item()
            self.history["torchscript"] = {"path": ts_path, "max_diff": ts_diff}
            self.log(f"TorchScript model written to {ts_path} (reloaded, max |diff| {ts_diff:.2e})")
        except Exception as e:  # report, but keep the rest of the summary
            self.history["torchscript"] = {"error": f"{type(e).__name__}: {e}"}
            self.log(f"WARNING: TorchScript export failed: {type(e).__name__}: {e}")
        stats = model_stats(dense, comp)
        self.history["stats"] = stats
        bits = {rule["match"]: c["bits"] for rule in self.cfg["layers"] for c in rule.get("constraints", [])
                if c["type"] == "quantize"}
        self.history["weight_bits"] = (f"{next(iter(bits.values()))} (all constrained layers)"
                                       if len(set(bits.values())) == 1 and len(bits) == len(self.cfg["layers"])
                                       else ", ".join(f"{b} ({m})" for m, b in bits.items()) or "32 (float)")
        plot_path = os.path.join(self.out, "compression.png")
        try:
            plot(stats, plot_path)
            self.log(f"plot written to {plot_path}")
        except Exception as e:
            self.log(f"WARNING: plot failed: {type(e).__name__}: {e}")
        table = summary_table(self.history, stats)
        self.log(table)
        with open(os.path.join(self.out, "summary.md"), "w") as f:
            f.write(table + "\n")
        with open(os.path.join(self.out, "summary.json"), "w") as f:
            json.dump(self.history, f, indent=1, default=str)
        self.finish("report")


class Interrupted(RuntimeError):
    pass


# ---------------------------------------------------------------------------------------- stats
def model_stats(dense: torch.nn.Module, comp: torch.nn.Module) -> Dict[str, Any]:
    """Per-layer density, kept 3x3 kernels, pattern usage and storage of the compressed model."""
    from .nn import PatternConv2d
    layers = []
    usage: Dict[tuple, int] = {}
    bits = dense_bits = kernels = kept = 0
    for name, p in dense.named_parameters():
        if p.dim() >= 2:
            layers.append({"name": name, "shape": list(p.shape), "density": float((p != 0).float().mean())})
    for name, m in comp.named_modules():
        if isinstance(m, PatternConv2d):
            w = m.to_dense().weight.detach()
            cout, cin = w.shape[:2]
            kernels += cout * cin
            nz_kernels = int((w.flatten(2) != 0).any(-1).sum())
            kept += int(m.kernel_pattern.numel())
            positions = m.patterns.long()
            for pid, count in zip(*torch.unique(m.kernel_pattern.long(), return_counts=True)):
                key = tuple(int(v) for v in positions[int(pid)])
                usage[key] = usage.get(key, 0) + int(count)
            sb = m.storage_bits()
            bits += sum(sb.values())
            dense_bits += m.dense_bits()
            for rec in layers:
                if rec["name"] == name + ".weight":
                    rec.update(kernels=cout * cin, kept_kernels=int(m.kernel_pattern.numel()),
                               nonzero_kernels=nz_kernels, entries=int(m.patterns.shape[1]),
                               storage_bits=sum(sb.values()), dense_bits=m.dense_bits())
    return {"layers": layers, "pattern_usage": sorted(usage.items(), key=lambda kv: -kv[1]),
            "conv_kernels": kernels, "conv_kept_kernels": kept, "conv_storage_bits": bits,
            "conv_dense_bits": dense_bits}


def plot(stats: Dict[str, Any], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    names = [r["name"].replace(".weight", "") for r in stats["layers"]]
    a.bar(range(len(names)), [100 * r["density"] for r in stats["layers"]], color="tab:blue")
    a.set_xticks(range(len(names)))
    a.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    a.set_ylabel("nonzero weights (%)")
    a.set_title("per-layer weight density")
    for i, r in enumerate(stats["layers"]):
        a.text(i, 100 * r["density"] + 1, f"{100 * r['density']:.1f}", ha="center", fontsize=7)
    usage = stats["pattern_usage"]
    labels = ["".join("x" if i in set(pos) else "." for i in range(9)) for pos, _ in usage]
    labels = [f"{s[0:3]}/{s[3:6]}/{s[6:9]}" for s in labels]
    b.bar(range(len(usage)), [c for _, c in usage], color="tab:orange")
    b.set_xticks(range(len(usage)))
    b.set_xticklabels(labels, rotation=45, ha="right", fontsize=8, family="monospace")
    b.set_ylabel("kept 3x3 kernels")
    b.set_title("pattern usage (all 3x3 convs; rows top/mid/bottom)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_table(history: Dict[str, Any], stats: Dict[str, Any]) -> str:
    acc = history["acc"]
    lat = history.get("latency_ms", {})
    rows = [("dense top-1 (%)", f"{acc.get('dense', float('nan')):.2f}"),
            ("compressed top-1 (%)", f"{acc.get('compressed', float('nan')):.2f}"),
            ("delta (points)", f"{acc.get('compressed', float('nan')) - acc.get('dense', float('nan')):+.2f}")]
    if stats["conv_kernels"]:
        entries = sorted({r["entries"] for r in stats["layers"] if "entries" in r})
        rows += [("kept 3x3 kernels", f"{stats['conv_kept_kernels']}/{stats['conv_kernels']} "
                                      f"({100 * stats['conv_kept_kernels'] / stats['conv_kernels']:.1f}%)"),
                 ("weights per kept kernel", f"{'/'.join(map(str, entries))} of 9"),
                 ("patterns used", f"{len(stats['pattern_usage'])}"),
                 ("3x3 conv storage (bits)", f"{stats['conv_storage_bits']} vs {stats['conv_dense_bits']} dense fp32"),
                 ("3x3 conv compression ratio", f"{stats['conv_dense_bits'] / max(stats['conv_storage_bits'], 1):.1f}x")]
    tot = history.get("report_totals")
    if tot:
        rows.append(("conv + FC compression ratio (report)", f"{tot['ratio']:.1f}x"))
        if "model_ratio" in tot:
            rows.append(("whole state_dict compression ratio (BN etc. included)", f"{tot['model_ratio']:.1f}x"))
        if tot.get("mac_reduction"):
            rows.append(("conv + FC MAC reduction", f"{tot['mac_reduction']:.1f}x"))
    bits = history.get("weight_bits")
    if bits:
        rows.append(("weight bits", bits))
    for b in sorted(lat.get("dense", {})):
        d, c = lat["dense"][b], lat["compressed"][b]
        rows.append((f"latency batch {b} (ms) dense / compressed", f"{d:.3f} / {c:.3f}  (speedup {d / c:.2f}x)"))
    ts = history.get("torchscript", {})
    rows.append(("TorchScript", ts.get("path", ts.get("error", "-"))))
    w = max(len(k) for k, _ in rows)
    lines = ["| " + "metric".ljust(w) + " | value |", "|" + "-" * (w + 2) + "|-------|"]
    lines += [f"| {k.ljust(w)} | {v} |" for k, v in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="patsparse",
        description="Compress a VGG-style CNN on Fashion-MNIST with pattern + connectivity pruning and 4-bit "
                    "quantization (ADMM), convert it to PatternConv2d and report accuracy, size and latency.")
    p.add_argument("--config", help="TOML / YAML / JSON file overriding the defaults (see configs/default.toml)")
    p.add_argument("--out", default="runs/patsparse", help="output directory: checkpoints, plot, TorchScript, summary")
    p.add_argument("--data", help="directory with the Fashion-MNIST IDX files "
                                  "(default /usr/share/datasets/fashion-mnist or $PATSPARSE_DATA)")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {','.join(STAGES)} (default: all); a stage whose "
                        "predecessor did not run in this process starts from OUT/<predecessor>.pt")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt (stage, epoch, model, "
                                                         "optimizer incl. ADMM state, LR schedule, RNG)")
    p.add_argument("--quick", action="store_true", help="small subset and 2 epochs per stage (about 2 minutes)")
    p.add_argument("--method", choices=METHODS, help="constraint phase: admm (ADMM), oneshot (project at once, "
                   "then masked training) or gradual (cubic keep schedule); overrides admm.method")
    p.add_argument("--retrain-on", choices=RETRAIN_ON, help="masked retraining on the dense model with masks or "
                   "through the compressed modules (same result to rounding); overrides retrain.on")
    p.add_argument("--epochs", type=int, help="epochs for each of dense / admm / retrain (overrides the config)")
    p.add_argument("--train-limit", type=int, help="use the first N training images")
    p.add_argument("--test-limit", type=int, help="use the first N test images")
    p.add_argument("--threads", type=int, help="torch threads (default 2)")
    p.add_argument("--seed", type=int)
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the effective configuration and exit")
    p.add_argument("--interrupt-after", type=int, help=argparse.SUPPRESS)  # testing: stop after N epochs
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides: Dict[str, Any] = {}
    if args.epochs is not None:
        for s in ("dense", "admm", "retrain"):
            overrides[s] = {"epochs": args.epochs}
    for key in ("train_limit", "test_limit", "threads", "seed"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    if args.method is not None:
        overrides.setdefault("admm", {})["method"] = args.method
    if args.retrain_on is not None:
        overrides.setdefault("retrain", {})["on"] = args.retrain_on
    try:
        cfg = build_config(args.config, args.quick, overrides)
    except ConfigError as e:
        print(f"patsparse: config error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(json.dumps(cfg, indent=1))
        return 0
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        print(f"patsparse: unknown stage(s) {bad} (stages: {','.join(STAGES)})", file=sys.stderr)
        return 2
    stages = [s for s in STAGES if s in stages]
    from .data import DataNotFound
    try:
        job = Job(cfg, args)
        # validate the layer rules against the real model before any training
        resolve_layers(job.model, cfg["layers"])
    except DataNotFound as e:
        print(f"patsparse: {e}", file=sys.stderr)
        return 2
    except ConfigError as e:
        print(f"patsparse: config error: {e}", file=sys.stderr)
        return 2
    try:
        if args.resume:
            job.load(os.path.join(args.out, "checkpoint.pt"))
            job.log(f"resumed from {args.out}/checkpoint.pt: stages done {job.done}, "
                    f"in progress {job.stage!r} epoch {job.epoch}")
        else:
            first = STAGES.index(stages[0])
            if first > 0:
                prev = STAGES[first - 1]
                job.load(os.path.join(args.out, prev + ".pt"), finished_stage=prev)
                job.log(f"starting from {args.out}/{prev}.pt")
    except (FileNotFoundError, ValueError) as e:
        print(f"patsparse: cannot continue: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    try:
        for s in stages:
            if s in job.done:
                continue
            missing = [p for p in STAGES[:STAGES.index(s)] if p not in job.done]
            if missing:
                print(f"patsparse: stage {s!r} needs {missing} first", file=sys.stderr)
                return 2
            getattr(job, "stage_" + s)()
    except Interrupted as e:
        job.log(str(e))
        return 3
    job.log(f"done in {time.time() - t0:.0f}s; outputs in {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
