"""Knowledge distillation for masked retraining (ps.distillation_loss, ps.Distillation, train_epoch's
``distill``): the loss equals the hand-computed Hinton et al. loss, bad settings raise clear errors,
and retraining with it keeps every constraint exact and never moves the teacher."""
import math

import pytest
import torch
import torch.nn.functional as F

import torch_patsparse as ps
from torch_patsparse.train import train_epoch

from helpers import CONV_SPEC, FC_SPEC, batch, check_in_set, tiny_net, train

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.py


def hand_kd(logits, targets, teacher_logits, t, alpha):
    """The distillation loss written out per sample from its definition (no torch loss functions)."""
    total = 0.0
    for z, y, zt in zip(logits.double(), targets, teacher_logits.double()):
        ce = -(z[y] - torch.logsumexp(z, 0))
        p_t = torch.softmax(zt / t, 0)
        log_p_s = z / t - torch.logsumexp(z / t, 0)
        kl = (p_t * (torch.log(p_t) - log_p_s)).sum()
        total += (1 - alpha) * ce + alpha * t * t * kl
    return total / logits.shape[0]


@pytest.mark.parametrize("t,alpha", [(1.0, 0.5), (4.0, 0.7), (2.0, 1.0), (3.0, 0.0)])
def test_loss_equals_hand_computed_kd(t, alpha):
    g = torch.Generator().manual_seed(0)
    logits, teacher = torch.randn(6, 5, generator=g) * 3, torch.randn(6, 5, generator=g) * 3
    y = torch.randint(0, 5, (6,), generator=g)
    got = ps.distillation_loss(logits, y, teacher, temperature=t, alpha=alpha)
    assert math.isclose(float(got), float(hand_kd(logits, y, teacher, t, alpha)), rel_tol=1e-5, abs_tol=1e-6)


def test_soft_term_vanishes_when_student_matches_teacher_and_gradient_points_to_it():
    g = torch.Generator().manual_seed(1)
    teacher, y = torch.randn(4, 3, generator=g), torch.randint(0, 3, (4,), generator=g)
    assert float(ps.distillation_loss(teacher, y, teacher, alpha=1.0)) == pytest.approx(0.0, abs=1e-6)
    student = torch.zeros(4, 3, requires_grad=True)
    ps.distillation_loss(student, y, teacher, temperature=2.0, alpha=1.0).backward()
    # the soft term pulls the student's logits towards the teacher's (centred: softmax ignores shifts)
    centred = teacher - teacher.mean(1, keepdim=True)
    assert (-(student.grad) * centred).sum() > 0
    assert student.grad.sum(1).abs().max() < 1e-6


@pytest.mark.parametrize("kw,match", [({"temperature": 0.0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
                                      ({"alpha": 1.5}, "alpha"), ({"alpha": -0.1}, "alpha"),
                                      ({"temperature": "4"}, "temperature"), ({"alpha": None}, "alpha"),
                                      ({"alpha": True}, "alpha")])
def test_bad_settings_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ps.distillation_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 3), **kw)
    with pytest.raises(ValueError, match=match):
        ps.Distillation(tiny_net(), **kw)


def test_teacher_logits_of_another_shape_raise():
    with pytest.raises(ValueError, match="do not match"):
        ps.distillation_loss(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long), torch.zeros(2, 4))


def test_masked_retraining_with_distillation_keeps_constraints_and_teacher():
    teacher = tiny_net(seed=1)
    train(teacher, torch.optim.SGD(teacher.parameters(), lr=0.05, momentum=0.9), 20)
    teacher_state = {k: v.clone() for k, v in teacher.state_dict().items()}
    x = torch.cat([batch(i)[0] for i in range(8)])
    y = torch.cat([batch(i)[1] for i in range(8)])

    def retrain(distill):
        m = tiny_net()
        opt = ps.ADMM.from_model(m, [(r"[03]\.weight", CONV_SPEC), (r"8\.weight", FC_SPEC)], base=torch.optim.SGD,
                                 method="oneshot", phase_steps=1, lr=0.05, momentum=0.9)
        opt.hard_prune()
        masks = opt.masks()
        for _ in range(3):
            train_epoch(m, opt, x, y, 16, torch.Generator().manual_seed(0), show=False, distill=distill)
        return m, opt, masks

    m, opt, masks = retrain(ps.Distillation(teacher, temperature=3.0, alpha=0.8))
    named = dict(m.named_parameters())
    pset = opt.pattern_sets()[0]
    for n, mask in masks.items():
        p = named[n].detach()
        assert not p[~mask].any(), n
        assert torch.isin(p, opt._admm[named[n]].levels).all(), n
        for c in (CONV_SPEC if n != "8.weight" else FC_SPEC):
            check_in_set(c, p, pset)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, teacher_state[k]), k  # BN statistics too: the teacher ran in eval mode
    plain, _, _ = retrain(None)
    assert any(not torch.equal(a, b) for a, b in zip(m.parameters(), plain.parameters()))  # the soft term acted


def test_the_teacher_mode_is_restored():
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10), torch.nn.Dropout(0.5))
    d = ps.Distillation(teacher, temperature=4.0, alpha=0.5)
    d.loss(torch.randn(4, 10), torch.randint(0, 10, (4,)), torch.randn(4, 1, 4, 4))
    assert teacher.training


def test_mixed_modes_are_restored_and_recalibrate_bn_fails_cleanly():
    """A frozen BatchNorm in a training model stays in eval after a teacher call and after
    recalibrate_bn; recalibrate_bn refuses zero images (it reset the statistics to 0 / 1) and, when
    a forward raises, leaves statistics, momentum and modes as they were."""
    from torch_patsparse.train import recalibrate_bn
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3, momentum=0.3))
    m.train()
    m[1].eval()
    ps.Distillation(m).loss(torch.randn(5, 3), torch.randint(0, 3, (5,)), torch.randn(5, 4))
    assert m.training and not m[1].training
    recalibrate_bn(m, torch.randn(10, 4), show=False)
    assert m.training and not m[1].training and m[1].momentum == 0.3
    m[1].running_mean.fill_(5.0)
    with pytest.raises(ValueError, match="at least one image"):
        recalibrate_bn(m, torch.randn(10, 4), max_images=0, show=False)
    with pytest.raises(ValueError):  # the last batch holds one sample: BatchNorm1d raises in train mode
        recalibrate_bn(m, torch.randn(11, 4), batch_size=5, show=False)
    assert m.training and not m[1].training and m[1].momentum == 0.3
    assert torch.equal(m[1].running_mean, torch.full((3,), 5.0))
    recalibrate_bn(m, x := torch.randn(20, 4), batch_size=10, show=False)
    with torch.no_grad():
        h = m[0](x)
    assert torch.allclose(m[1].running_mean, (h[:10].mean(0) + h[10:].mean(0)) / 2, atol=1e-6)


def test_distillation_without_a_teacher_is_refused_at_once():
    with pytest.raises(TypeError, match="teacher must be an nn.Module"):
        ps.Distillation(None)
