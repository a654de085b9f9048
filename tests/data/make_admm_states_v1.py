"""Writes tests/data/admm_states_v1.pt with the code at commit d60e669 (ADMM state as string-keyed
dicts, before the typed state of admm/_state.py): per case the optimizer's constructor arguments, the
model and ADMM state_dicts after some steps, and both again after RESUME_STEPS more steps."""
import copy
import sys

import torch

sys.path.insert(0, "tests")
from test_admm import make_opt, tiny_net, train  # noqa: E402

RESUME_STEPS = 4
BASES = {"SGD": torch.optim.SGD, "Adam": torch.optim.Adam}
CASES = {  # name: (base, optimizer keyword arguments, steps before saving, hard prune before that step)
    "gradient_sgd": ("SGD", dict(lr=0.02, update_every=4), 11, None),
    "gradient_sgd_before_first_update": ("SGD", dict(lr=0.02, update_every=4), 2, None),
    "proximal_adam_consensus_balance": ("Adam", dict(lr=0.01, update_every=4, penalty="proximal",
                                                     consensus=True, balance=True), 10, None),
    "gradual_sgd": ("SGD", dict(lr=0.02, update_every=3, method="gradual", phase_steps=12), 7, None),
    "retrain_adam": ("Adam", dict(lr=0.01, update_every=4), 11, 9),
    "oneshot_sgd_before_first_step": ("SGD", dict(lr=0.02, method="oneshot"), 0, None),
}

torch.set_num_threads(1)
out = {"resume_steps": RESUME_STEPS}
for name, (base, kw, steps, prune_at) in CASES.items():
    model = tiny_net()
    opt = make_opt(model, base=BASES[base], **kw)
    for i in range(steps):
        if i == prune_at:
            opt.hard_prune()
        train(model, opt, 1, start=i)
    rec = {"base": base, "kwargs": kw, "steps": steps,  # copies: a state_dict shares the live tensors
           "model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict())}
    train(model, opt, RESUME_STEPS, start=steps)
    rec.update(model_after=model.state_dict(), opt_after=opt.state_dict())
    out[name] = rec
torch.save(out, "tests/data/admm_states_v1.pt")
