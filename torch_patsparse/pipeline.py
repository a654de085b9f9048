"""The main job's pipeline (:class:`Job`): data, optimizers, checkpoints and the stages
dense -> constraint phase -> retrain -> convert -> report; the CLI (cli.py) drives it."""
import contextlib
import copy
import json
import math
import os
import time
from typing import Any, Dict, List, Optional

import torch

from . import data as D
from .admm import ADMM, NonFiniteError
from .compressed_training import compressed_training
from .config import canonical_layers, resolve_layers
from .convert import convert
from .export import torchscript
from .models import fmnist_vgg
from .report import compression_report
from .summary import model_stats, plot, summary_table
from .train import Distillation, evaluate, latency, recalibrate_bn, train_epoch

STAGES = ("dense", "admm", "retrain", "convert", "report")
# configuration keys each stage depends on (a later stage may start from an earlier stage's file
# written with a different configuration for the later stages)
STAGE_CONFIG = {"dense": ("model", "seed", "batch_size", "train_limit", "test_limit", "dense"),
                "admm": ("admm", "layers"), "retrain": ("retrain",), "convert": (), "report": ("latency",)}
CKPT_VERSION = 1

# the files of each stage's results, and those the report writes
STAGE_FILES = {s: [s + ".pt"] for s in STAGES}
STAGE_FILES["report"] += ["summary.json", "summary.md", "model_compressed.pt", "compression.png"]


def _shaping(cfg: Dict[str, Any], key: str):
    """cfg[key] without the settings that do not shape the trained model (retrain.on: to rounding),
    constraints written out in full (omitted fields are their defaults)."""
    v = cfg.get(key)
    if key == "layers" and isinstance(v, list):
        try:
            return canonical_layers(v)
        except (ValueError, TypeError):
            return v
    return {k: x for k, x in v.items() if k != "on"} if key == "retrain" and isinstance(v, dict) else v


def read_checkpoint(path: str) -> Dict[str, Any]:
    """A checkpoint this pipeline wrote (weights-only load); ValueError for anything else."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        st = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated, not a torch file, foreign objects
        raise ValueError(f"{path} is not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0]})") from e
    if not isinstance(st, dict) or not isinstance(st.get("config"), dict) or "model" not in st:
        raise ValueError(f"{path} is not a checkpoint of this command (no config / model entries)")
    if st.get("version") != CKPT_VERSION:
        raise ValueError(f"{path}: checkpoint version {st.get('version')} is not {CKPT_VERSION}")
    return st


class Diverged(RuntimeError):
    """Training produced a non-finite loss."""


class Job:
    """State of one run: model, optimizer, scheduler, RNG, history; knows how to checkpoint."""

    def __init__(self, cfg: Dict[str, Any], args):
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
        self._said_dense_retrain = False  # (training_form's note, once per run)
        self.converted = None     # the converted model (after the convert stage)
        self.interrupt_after = args.interrupt_after
        self.epochs_run = 0
        self._distill: Optional[Distillation] = None

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

    def distillation(self) -> Optional[Distillation]:
        """Soft targets of the dense model (OUT/dense.pt) for masked retraining, when retrain.distill_alpha > 0."""
        c = self.cfg["retrain"]
        if c["distill_alpha"] == 0:
            return None
        if self._distill is None:
            path = os.path.join(self.out, "dense.pt")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"retrain.distill_alpha > 0 needs the dense model as teacher: no {path}")
            st = self._checked(path, "dense")  # a teacher from another configuration: refused
            # its init draws no numbers from the run's stream (after --resume: bit-exact)
            with torch.random.fork_rng(devices=[]):
                teacher = fmnist_vgg()
            try:
                teacher.load_state_dict(st["model"])
            except RuntimeError as e:
                raise ValueError(f"{path}: its model does not fit ({str(e).splitlines()[0]})") from e
            self._distill = Distillation(teacher.eval(), c["distill_temperature"], c["distill_alpha"])
        return self._distill

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
        st = self._checked(path, finished_stage)
        try:
            self._restore(st)
        except (KeyError, TypeError, RuntimeError) as e:  # a damaged or edited file
            raise ValueError(f"{path}: cannot restore from it ({type(e).__name__}: {str(e).splitlines()[0]})") from e

    def _restore(self, st: Dict[str, Any]) -> None:
        # the fields load_state_dict does not validate (an edited file failed later, in a stage)
        done, history = st["done"], st["history"]
        if not (isinstance(done, list) and all(s in STAGES for s in done) and isinstance(st["epoch"], int)
                and st["opt_kind"] in (None, "SGD", "ADMM") and isinstance(history, dict)
                and isinstance(history.get("epochs"), list) and isinstance(history.get("acc"), dict)):
            raise TypeError("done / epoch / opt_kind / history are not what a run writes")
        self.stage, self.epoch, self.done, self.history = st["stage"], st["epoch"], done, history
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

    def _checked(self, path: str, finished_stage: Optional[str]) -> Dict[str, Any]:
        """``read_checkpoint(path)`` written with this configuration: all of it, or (``finished_stage``:
        the file of that stage) the part that shaped the stages up to it."""
        st = read_checkpoint(path)
        # everything that shapes the trained model must match (latency / thread settings may differ)
        keys = set(st["config"]) | set(self.cfg)
        if finished_stage is not None:
            keys &= {k for s in STAGES[:STAGES.index(finished_stage) + 1] for k in STAGE_CONFIG[s]}
        diff = [k for k in keys if k not in ("latency", "threads") and _shaping(st["config"], k) != _shaping(self.cfg, k)]
        if diff:
            raise ValueError(f"{path} was written with a different configuration (keys {sorted(diff)}); "
                             f"resume with the same --config/--quick options, or use another --out")
        return st

    # ---------------- stages
    def log(self, msg: str) -> None:
        print(msg, flush=True)

    def evaluate(self, model=None, desc="eval") -> float:
        return evaluate(self.model if model is None else model, self.x_test, self.y_test, desc=desc, show=self.show)["acc"]

    def run_epochs(self, stage: str, epochs: int) -> None:
        while self.epoch < epochs:
            t0, c0 = time.time(), time.process_time()
            try:
                with self.training_form():
                    stats = train_epoch(self.model, self.opt, self.x_train, self.y_train, self.cfg["batch_size"],
                                        self.gen, desc=f"{stage} {self.epoch + 1}/{epochs}", scheduler=self.sched,
                                        show=self.show, distill=self.distillation() if stage == "retrain" else None)
            except NonFiniteError as e:
                # (in retrain after an ADMM phase that ran away: its weights stayed finite, the gradients did not)
                earlier = " (or admm.lr: the weights came from the admm stage)" if stage == "retrain" else ""
                raise Diverged(f"training diverged in {stage} epoch {self.epoch + 1} ({e}): lower {stage}.lr"
                               f"{earlier} and start again") from e
            # a finite loss with NaN / inf weights or ADMM residuals diverged too: the next stage would fail on them
            res = self.opt.residuals() if stage == "admm" and self.opt.phase != "retrain" else {}
            finite = (all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
                      and all(math.isfinite(v) for v in res.values()))
            if not math.isfinite(stats["loss"]) or not finite:
                raise Diverged(f"training diverged in {stage} epoch {self.epoch + 1} (loss {stats['loss']}"
                               f"{'' if finite else ', weights or ADMM residuals NaN / inf'}): lower {stage}.lr and "
                               "start again")
            acc = self.evaluate(desc=f"{stage} eval")
            self.epoch += 1
            rec = {"stage": stage, "epoch": self.epoch, "train_loss": stats["loss"], "train_acc": stats["acc"],
                   "test_acc": acc, "seconds": time.time() - t0, "cpu_seconds": time.process_time() - c0}
            line = (f"[{stage} {self.epoch}/{epochs}] loss {stats['loss']:.4f} train {stats['acc']:.2f}% "
                    f"test {acc:.2f}%  ({rec['seconds']:.0f}s wall, {rec['cpu_seconds']:.0f}s CPU)")
            if stage == "admm" and self.opt.phase != "retrain":
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
        if self.cfg["retrain"]["on"] == "compressed" and isinstance(self.opt, ADMM) and self.opt.phase == "retrain":
            if any(pset is not None for pset in self.opt.pattern_sets()):  # (groups with a Pattern constraint)
                return compressed_training(self.model, self.opt)
            if not self._said_dense_retrain:  # (compressed_training would warn each epoch)
                self._said_dense_retrain = True
                self.log("retrain.on = 'compressed': no layer has a pattern constraint (nothing becomes a "
                         "PatternConv2d), so the masked dense model is retrained")
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
        # the outputs of later stages came from another run: they would sit beside this one's as if
        # they were its results
        stale = [f for s in STAGES[STAGES.index(stage) + 1:] if s not in self.done for f in STAGE_FILES[s]
                 if os.path.exists(os.path.join(self.out, f))]
        for f in stale:
            os.remove(os.path.join(self.out, f))
        if stale:
            self.log(f"removed the outputs of an earlier run's later stages: {', '.join(stale)}")

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
        probe = copy.deepcopy(self.model)
        recalibrate_bn(probe, self.x_train, self.cfg["batch_size"], show=self.show)
        self.history["acc"]["admm_bn"] = self.evaluate(probe, desc="admm eval (BN re-estimated)")
        residual = f" (max residual {max(res.values()) if res else 0:.4f})" if self.opt.method == "admm" else ""
        self.log(f"after the {self.opt.method} phase: {self.history['acc']['admm']:.2f}% with the running BN "
                 f"statistics, {self.history['acc']['admm_bn']:.2f}% with BN re-estimated{residual}")
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

    def convert_model(self) -> torch.nn.Module:
        """Copy of the (retrained) model converted with ``ps.convert``: 3x3 convs become
        PatternConv2d, each with the pattern set its ADMM group trained with; with
        ``torch_patsparse.nn.sparse`` available, the other constrained layers (FC) are stored
        sparse + k-bit too."""
        # 3x3 convs -> PatternConv2d; the other constrained layers (FC) -> sparse k-bit modules;
        # layers no rule constrains stay dense (excluded, so convert has nothing to warn about)
        psets, exclude = {}, []
        if isinstance(self.opt, ADMM):  # its groups say which layers were constrained
            psets = self.opt.pattern_sets_by_module(self.model)
            constrained = {n for g in self.opt.param_groups if g.get("constraints") for n in g.get("names", [])}
            exclude = [name for name, m in self.model.named_modules()
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
        ts_path = os.path.abspath(os.path.join(self.out, "model_compressed.pt"))
        try:
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
        bits = {rule["match"]: c["bits"] for rule in canonical_layers(self.cfg["layers"])
                for c in rule["constraints"] if c["type"] == "quantize"}
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
