"""The main job's configuration: built-in defaults, ``--quick``, config files (TOML / YAML / JSON),
validation with clear errors, and the layer rules resolved against a model."""
import copy
import json
import math
import os
from typing import Any, Dict, List, Optional

import torch

from . import constraints as C
from . import select
from .admm import METHODS, PENALTIES

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
    "retrain": {"epochs": 4, "lr": 0.02, "on": "compressed", "distill_alpha": 0.0, "distill_temperature": 4.0},
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

# masked retraining (every epoch after the hard prune) on the dense model with masks, or through the
# compressed modules (ps.compressed_training: same result to rounding)
RETRAIN_ON = ("dense", "compressed")



class ConfigError(ValueError):
    pass


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
    if os.path.isdir(path):
        raise ConfigError(f"config file {path!r} is a directory")
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
    if path is not None and not str(path).strip():
        raise ConfigError("--config names no file (an empty path)")
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
    _check_number(cfg, "seed", lambda v: isinstance(v, int) and 0 <= v < 2 ** 63, "an int >= 0")
    for key in ("dense.momentum", "admm.momentum", "dense.weight_decay", "admm.weight_decay"):
        _check_number(cfg, key, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
    _check_number(cfg, "retrain.distill_alpha", lambda v: 0 <= v <= 1, "a number in [0, 1]")
    for key in ("dense.lr", "admm.lr", "retrain.lr", "admm.rho", "retrain.distill_temperature"):
        _check_number(cfg, key, lambda v: v > 0 and math.isfinite(v), "a positive number")
    if cfg["admm"]["rho_growth"] != "auto":
        _check_number(cfg, "admm.rho_growth", lambda v: v >= 1 and math.isfinite(v), 'a number >= 1 or "auto"')
    _check_number(cfg, "admm.rho_max", lambda v: v >= cfg["admm"]["rho"] and math.isfinite(v),
                  f"a number >= admm.rho ({cfg['admm']['rho']})")
    for key in ("train_limit", "test_limit"):
        if cfg[key] is not None:
            _check_number(cfg, key, lambda v: isinstance(v, int) and v >= 1, "an int >= 1")
    if not isinstance(cfg["latency"]["batches"], list) or not cfg["latency"]["batches"] or not all(
            isinstance(b, int) and not isinstance(b, bool) and b >= 1 for b in cfg["latency"]["batches"]):
        raise ConfigError("config 'latency.batches' must be a non-empty list of ints >= 1, "
                          f"got {cfg['latency']['batches']!r}")
    layers = cfg["layers"]
    if not isinstance(layers, list):
        raise ConfigError("config 'layers' must be a list of {match = ..., constraints = [...]} tables")
    for i, rule in enumerate(layers):
        if not isinstance(rule, dict) or set(rule) - {"match", "constraints"} or "match" not in rule:
            raise ConfigError(f"config layers[{i}] must be a table with keys 'match' (a glob over parameter "
                              f"names) and 'constraints' (a list), got {rule!r}")
        if not isinstance(rule["match"], str) or not rule["match"]:
            raise ConfigError(f"config layers[{i}].match must be a non-empty string, got {rule['match']!r}")
        try:
            select.selector(rule["match"])
        except ValueError as e:
            raise ConfigError(f"config layers[{i}].match: {e}") from e
        cons = rule.get("constraints", [])
        if not isinstance(cons, list):
            raise ConfigError(f"config layers[{i}].constraints must be a list, got {cons!r}")
        where = f"layers[{i}] ({rule['match']})"
        try:  # two of one kind: an error now, not after the dense stage
            C.ordered([make_constraint(c, where) for c in cons], rule["match"])
        except ValueError as e:
            raise ConfigError(f"config layers[{i}]: {e}") from e


def canonical_layers(rules: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The layer rules with every constraint written out in full (``constraints.to_spec``), so two
    configs that mean the same (``{type = "quantize"}`` and ``{type = "quantize", bits = 8}``) compare equal."""
    return [{**rule, "constraints": [C.to_spec(C.from_spec(c)) for c in rule.get("constraints", [])]}
            for rule in rules]


def make_constraint(spec, where: str = "?"):
    """{"type": "pattern", "k": 8} -> C.Pattern(k=8) (constraints.from_spec), errors as ConfigError."""
    try:
        return C.from_spec(spec)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e


def resolve_layers(model: torch.nn.Module, rules: List[Dict[str, Any]]):
    """Assign every parameter to the first rule whose selector (:mod:`torch_patsparse.select`: a glob,
    or a regex after ``"re:"``) takes its name (1-D parameters are
    never constrained). Returns ``[(rule index, [(name, param), ...], [constraints])]`` for the
    rules that matched something, plus ``[(name, param)]`` for the unconstrained rest. A rule that
    matches no parameter, or a constraint that does not fit a parameter, is a ConfigError."""
    groups, rest = select.assign(model.named_parameters(), [rule["match"] for rule in rules],
                                 eligible=lambda name, p: p.dim() >= 2)
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
