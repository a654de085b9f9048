"""The one selector language (torch_patsparse.select): globs, "re:" regexes, callables; first rule wins."""
import pytest
import torch

import torch_patsparse as ps
from torch_patsparse import constraints as C
from torch_patsparse import select


def net():
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 8, 3),
                               torch.nn.Flatten(), torch.nn.Linear(8, 4))


def names(members):
    return [n for n, _ in members]


def test_glob_regex_and_callable_selectors():
    named = list(net().named_parameters())
    members, rest = select.assign(named, ["*.weight", r"re:\d\.bias"])
    assert names(members[0]) == ["0.weight", "1.weight", "2.weight", "4.weight"]
    assert names(members[1]) == ["0.bias", "1.bias", "2.bias", "4.bias"] and rest == []
    members, rest = select.assign(named, [lambda n, p: p.dim() == 4, "4.*"])  # first rule wins
    assert names(members[0]) == ["0.weight", "2.weight"] and names(members[1]) == ["4.weight", "4.bias"]
    assert names(rest) == ["0.bias", "1.weight", "1.bias", "2.bias"]
    # a plain string is a regex under plain="regex" (ADMM.from_model's form), a glob never matches "\d"
    assert names(select.assign(named, [r"[02]\.weight"], plain="regex")[0][0]) == ["0.weight", "2.weight"]
    assert select.assign(named, [r"[02]\.weight"])[0][0] == []
    assert select.selector("a[1]")("a[1]", None)  # an exact name matches itself, glob characters or not


def test_eligible_params_only_are_offered():
    members, rest = select.assign(net().named_parameters(), ["*"], eligible=lambda n, p: p.dim() >= 2)
    assert names(members[0]) == ["0.weight", "2.weight", "4.weight"] and len(rest) == 5


@pytest.mark.parametrize("bad, message", [("re:(", "not a valid regex"), ("", "non-empty string"), (3, "callable")])
def test_bad_selector_is_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        select.selector(bad)
    with pytest.raises(ValueError, match="plain must be"):
        select.selector("*", plain="sql")


def test_param_groups_for_admm():
    m = net()
    m[1].weight.requires_grad_(False)
    groups = select.param_groups(m, {"[02].weight": [C.Pattern(k=4)], "4.weight": []})
    assert [names(g["params"]) for g in groups] == [["0.weight", "2.weight"], ["4.weight"],
                                                    ["0.bias", "1.bias", "2.bias", "4.bias"]]
    assert groups[0]["constraints"] == [C.Pattern(k=4)] and groups[1]["constraints"] == []
    assert "constraints" not in groups[2]
    opt = ps.ADMM(groups, lr=0.1)
    same = ps.ADMM.from_model(m, {r"[02]\.weight": [C.Pattern(k=4)], r"4\.weight": []}, lr=0.1)
    assert [g["params"] for g in opt.param_groups] == [g["params"] for g in same.param_groups]


@pytest.mark.parametrize("rules", [{"nomatch.weight": [C.Pattern(k=4)]},
                                   {"*.weight": [], "0.weight": [C.Pattern(k=4)]}])  # shadowed by the first
def test_a_rule_that_takes_nothing_is_an_error(rules):
    with pytest.raises(ValueError, match=r"takes no \(multi-dimensional\) parameter.*0.weight"):
        select.param_groups(net(), rules)
    with pytest.raises(ValueError, match="takes no"):
        ps.ADMM.from_model(net(), {r"conv\d\.weight": [C.Pattern(k=4)]}, lr=0.1)  # a misspelt regex


def test_rules_take_multi_dimensional_parameters_only():
    """As the CLI's config: a glob over a conv stack takes its conv weights, not its BatchNorms'."""
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.Conv2d(8, 8, 3))
    groups = select.param_groups(m, {"*.weight": [C.Pattern(k=4)]})
    assert [n for n, _ in groups[0]["params"]] == ["0.weight", "2.weight"]
    assert "1.weight" in [n for n, _ in groups[1]["params"]]
    ps.ADMM(groups, lr=0.1)


def test_a_module_selects_its_parameters():
    """The docstring's 'the module itself (model.features[0])' as a param_groups rule takes its weight
    (it matched nothing: a module is never a parameter); a container takes its children's."""
    model = net()
    groups = select.param_groups(model, {model[2]: [C.Pattern(k=4)], model: [C.Unstructured(keep=0.5)]})
    assert [names(g["params"]) for g in groups[:2]] == [["2.weight"], ["0.weight", "4.weight"]]


def test_from_model_says_a_plain_string_is_a_regex_there():
    model = net()
    for spec in ({"*.weight": [C.Unstructured(keep=0.5)]}, {"conv*.weight": [C.Unstructured(keep=0.5)]}):
        with pytest.raises(ValueError, match="a plain string is a regex here"):
            ps.ADMM.from_model(model, spec, lr=0.1)
    ps.ADMM.from_model(model, {"re:0.weight": [C.Unstructured(keep=0.5)]}, lr=0.1)


@pytest.mark.parametrize("key,value", [("rho", 5.0), ("update_every", 1), ("penalty", "gradient"), ("method", "gradual")])
def test_an_admm_wide_setting_in_a_param_group_is_refused(key, value):
    """ADMM's own settings are one for the optimizer; in a group they were ignored without a word."""
    model = net()
    with pytest.raises(ValueError, match=f"param group 0 sets '{key}'.*ADMM\\(\\.\\.\\., {key}="):
        ps.ADMM([{"params": [model[0].weight], "constraints": [C.Pattern(k=4)], key: value}], lr=0.1)
    # a base optimizer's own key of the same name is the base's
    ps.ADMM([{"params": [model[0].weight], "rho": 0.8}], base=torch.optim.Adadelta, lr=0.1)
