"""Which parameters a constraint rule takes, which modules ``convert`` treats: the one selector
language of the library and the CLI.

A selector is a glob over the name (``"features.*.weight"``, ``fnmatch`` case-sensitive; a string
always matches a name equal to it, so exact names work even when they hold glob characters, as
``nn.ModuleDict`` keys may), a regex with the prefix ``"re:"`` (``"re:features\\.\\d+\\.weight"``,
full match), a callable ``(name, param_or_module) -> bool``, or the parameter / module itself
(``model.features[0]``: taken by identity; a module selects its parameters, those of its children
included, where parameters are selected). Each parameter goes to the first rule whose selector
takes it.

    groups = ps.select.param_groups(model, {"features.*.weight": [C.Pattern(k=8)],
                                            "classifier.*.weight": [C.Unstructured(keep=0.1)]})
    opt = ps.ADMM(groups, lr=0.01)
"""
from __future__ import annotations

import fnmatch
import re
from typing import Callable, Iterable, List, Sequence, Tuple

import torch

from .constraints import Constraint

REGEX_PREFIX = "re:"
SYNTAXES = ("glob", "regex")

Named = Tuple[str, torch.nn.Parameter]


def selector(sel, plain: str = "glob") -> Callable[[str, torch.Tensor], bool]:
    """``sel`` as a predicate ``(name, param) -> bool``. ``plain`` says what a string without the
    ``"re:"`` prefix is: ``"glob"`` (default) or ``"regex"`` (``ADMM.from_model``'s historical form)."""
    if plain not in SYNTAXES:
        raise ValueError(f"select: plain must be one of {SYNTAXES}, got {plain!r}")
    if isinstance(sel, torch.nn.Module):  # (callable, but not a predicate): itself, or its parameters
        owned = {id(p) for p in sel.parameters()}
        return lambda name, obj: obj is sel or (isinstance(obj, torch.nn.Parameter) and id(obj) in owned)
    if isinstance(sel, torch.Tensor):
        return lambda name, obj: obj is sel
    if callable(sel):
        return sel
    if not isinstance(sel, str) or not sel:
        raise ValueError(f"select: a selector is a non-empty string, a callable (name, param or module) -> bool, "
                         f"or the parameter / module itself, got {sel!r}"[:300])
    if sel.startswith(REGEX_PREFIX) or plain == "regex":
        try:
            pattern = re.compile(sel[len(REGEX_PREFIX):] if sel.startswith(REGEX_PREFIX) else sel)
        except re.error as e:
            raise ValueError(f"select: {sel!r} is not a valid regex: {e}"
                             + ("" if sel.startswith(REGEX_PREFIX) else " (a plain string is a regex here, as in "
                                "ADMM.from_model; ps.select.param_groups reads globs)")) from e
        return lambda name, p: pattern.fullmatch(name) is not None
    return lambda name, p: name == sel or fnmatch.fnmatchcase(name, sel)


def assign(named: Iterable[Named], selectors: Sequence, plain: str = "glob",
           eligible: Callable[[str, torch.Tensor], bool] | None = None) -> Tuple[List[List[Named]], List[Named]]:
    """Split ``(name, param)`` pairs over ``selectors``: each pair goes to the first selector that
    takes it (only ``eligible`` pairs are offered). Returns one member list per selector (in order)
    and the rest."""
    preds = [selector(s, plain) for s in selectors]
    members: List[List[Named]] = [[] for _ in preds]
    rest: List[Named] = []
    for name, p in named:
        if eligible is None or eligible(name, p):
            hit = next((i for i, pred in enumerate(preds) if pred(name, p)), None)
            if hit is not None:
                members[hit].append((name, p))
                continue
        rest.append((name, p))
    return members, rest


def param_groups(model: torch.nn.Module, rules, plain: str = "glob") -> list:
    """Optimizer param groups from ``rules``, a dict (or list of pairs) ``selector -> constraints`` (a
    list of constraints, or one):
    one group ``{"params": [(name, param), ...], "constraints": [...]}`` per rule, then one
    unconstrained group with the rest. Parameters that do not require grad are left out; 1-D
    parameters (biases, BatchNorm weights) go to the rest, as in the CLI's config, so
    ``"features.*.weight"`` takes a conv stack's weights and not its BatchNorms'. A rule that takes
    no parameter (a misspelt name, or every match taken by an earlier rule) is a ValueError: its
    constraints would silently apply to nothing."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"select: expected an nn.Module, got {type(model).__name__}")
    entries = list(rules.items()) if isinstance(rules, dict) else list(rules)
    if not all(isinstance(e, (tuple, list)) and len(e) == 2 for e in entries):
        raise TypeError("select: the rules are a dict {selector: constraints} or a list of (selector, constraints) "
                        f"pairs, e.g. {{'features.*.weight': [C.Pattern(k=8)]}}; got {rules!r}"[:400])
    entries = [(sel, [cons] if isinstance(cons, Constraint) else list(cons or ())) for sel, cons in entries]
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    members, rest = assign(named, [sel for sel, _ in entries], plain, eligible=lambda name, p: p.dim() >= 2)
    empty = [sel for (sel, _), m in zip(entries, members) if not m]
    # a second name of a shared parameter (a module registered twice) is not one of named_parameters'
    first = {id(p): name for name, p in named}
    aliases = [(name, p) for name, p in model.named_parameters(remove_duplicate=False)
               if id(p) in first and first[id(p)] != name]
    for sel in empty:
        hit = assign(aliases, [sel], plain, eligible=lambda name, p: p.dim() >= 2)[0][0]
        if hit:
            name, p = hit[0]
            raise ValueError(f"select: {sel!r} takes {name!r}, which is the parameter {first[id(p)]!r} under a second "
                             "name (a module registered twice); select it by its first name")
    if empty:
        as_regex = plain == "regex" and any(isinstance(sel, str) and not sel.startswith(REGEX_PREFIX) for sel in empty)
        raise ValueError(f"select: {', '.join(map(repr, empty))} takes no (multi-dimensional) parameter that an "
                         "earlier rule did not take"
                         + (" (a plain string is a regex here, as in ADMM.from_model: 'features\\..*' rather than "
                            "the glob 'features.*'; ps.select.param_groups reads globs)" if as_regex else "")
                         + f"; parameters: {', '.join(n for n, p in named if p.dim() >= 2)}"[:1000])
    groups = [{"params": m, "constraints": cons} for (_, cons), m in zip(entries, members)]
    if rest:
        groups.append({"params": rest})
    return groups
