"""The main job's configuration (torch_patsparse.config): defaults, files, validation, layer rules."""
import os

import pytest

from torch_patsparse import config
from torch_patsparse.models import fmnist_vgg

from helpers import TINY, write


def test_default_toml_matches_builtin_defaults():
    import tomllib
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "configs", "default.toml"), "rb") as f:
        assert tomllib.load(f) == config.DEFAULTS


def test_config_file_overrides_and_yaml(tmp_path):
    cfg = config.build_config(write(tmp_path, TINY))
    assert cfg["batch_size"] == 64 and cfg["dense"]["epochs"] == 2 and cfg["dense"]["momentum"] == 0.9
    assert cfg["layers"][1]["constraints"][1] == {"type": "connectivity", "keep": 0.2}
    y = config.build_config(write(tmp_path, "admm:\n  rho: 0.1\nlayers: []\n", "c.yaml"))
    assert y["admm"]["rho"] == 0.1 and y["admm"]["epochs"] == config.DEFAULTS["admm"]["epochs"] and y["layers"] == []
    q = config.build_config(quick=True)
    assert q["train_limit"] == config.QUICK["train_limit"] and q["dense"]["lr"] == config.DEFAULTS["dense"]["lr"]


@pytest.mark.parametrize("text, message", [
    ("epochz = 3", "unknown config key 'epochz'"),
    ("[admm]\nrhoo = 1", "unknown config key 'admm.rhoo'"),
    ("[dense]\nepochs = -1", "'dense.epochs' must be an int >= 0"),
    ("[dense]\nlr = 'fast'", "'dense.lr' must be a positive number"),
    ("[admm]\nrho = 2.0\nrho_max = 1.0", "'admm.rho_max' must be a number >= admm.rho"),
    ("[admm]\nmethod = 'magnitude'", "'admm.method' must be one of admm, oneshot, gradual"),
    ("[admm]\nbalance = 1", "'admm.balance' must be true or false"),
    ("[admm]\npenalty = 'l2'", "'admm.penalty' must be one of gradient, proximal"),
    ("[admm]\nrho_growth = 'fast'", "'admm.rho_growth' must be a number >= 1 or \"auto\""),
    ("[[layers]]\nmatch = 'features.*.weight'\nconstraints = [{ type = 'patern' }]", "unknown constraint type 'patern'"),
    ("[[layers]]\nmatch = 'features.*.weight'\nconstraints = [{ type = 'pattern', k = 0 }]", "k must be an int"),
    ("[[layers]]\nmatch = 'features.*.weight'\nconstraints = [{ type = 'connectivity', keep = 1.5 }]", "keep must be"),
    ("[[layers]]\nmatch = 'features.*.weight'\nconstraints = [{ type = 'quantize', bitz = 4 }]", "bad arguments for quantize"),
    ("[[layers]]\nconstraints = []", "must be a table with keys 'match'"),
    ("[[layers]]\nmatch = 'features.*.weight'\nconstraints = [{ type = 'quantize', bits = 4 }, { type = 'quantize' }]",
     "layers\\[0\\]: two Quantize constraints for parameter 'features.\\*.weight'"),
    ("seed = 'abc'", "'seed' must be an int >= 0"),
    ("seed = 1.5", "'seed' must be an int >= 0"),
    ("[admm]\nmomentum = 'fast'", "'admm.momentum' must be a number >= 0"),
    ("[dense]\nmomentum = -1", "'dense.momentum' must be a number >= 0"),
    ("[dense]\nweight_decay = -1e-4", "'dense.weight_decay' must be a number >= 0"),
    ("[latency]\nbatches = []", "'latency.batches' must be a non-empty list"),
    ("this is = = not toml", "cannot parse config file"),
    ("[[layers]]\nmatch = 're:features.(\\d+.weight'\nconstraints = []", "layers\\[0\\].match: .*not a valid regex"),
])
def test_bad_config_is_a_clear_error(tmp_path, text, message):
    with pytest.raises(config.ConfigError, match=message):
        config.build_config(write(tmp_path, text))


def test_a_config_directory_is_named_as_such(tmp_path):
    with pytest.raises(config.ConfigError, match="is a directory"):
        config.build_config(str(tmp_path))


def test_layer_rules_resolved_against_the_model():
    model = fmnist_vgg()
    groups, rest = config.resolve_layers(model, config.DEFAULTS["layers"])
    names = [[n for n, _ in members] for _, members, _ in groups]
    assert names[0] == ["features.0.weight"]
    assert names[1] == ["features.3.weight", "features.7.weight", "features.10.weight", "features.14.weight",
                        "features.17.weight"]
    assert names[2] == ["classifier.1.weight", "classifier.3.weight"]
    assert all(p.dim() == 1 for _, p in rest)   # biases and BatchNorm stay unconstrained
    regex, _ = config.resolve_layers(model, [{"match": r"re:features\.(3|7)\.weight", "constraints": [{"type": "pattern"}]}])
    assert [n for n, _ in regex[0][1]] == ["features.3.weight", "features.7.weight"]
    with pytest.raises(config.ConfigError, match="matches no"):
        config.resolve_layers(model, [{"match": "conv*.weight", "constraints": []}])
    with pytest.raises(config.ConfigError, match="needs a \\[Cout, Cin, 3, 3\\] weight.*classifier.1.weight"):
        config.resolve_layers(model, [{"match": "classifier.1.weight", "constraints": [{"type": "pattern"}]}])
