"""qat_finetune and distill_loss: training lowers the loss (task, KL and MSE distillation,
pure distillation), every user error, and QAT recovering digits accuracy that W4A4 PTQ lost."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import LayerConfig, QuantSpec
from lowbit.errors import ConfigError
from lowbit.model.api import quantize_model
from lowbit.model.convert import convert
from lowbit.model.qat import distill_loss, qat_finetune
from lowbit.recipe import ByType, Recipe, Rule
from lowbit.types import PerChannel, PerTensor, Scheme, int4


def w4a4(learnable: bool = True) -> Recipe:
    """int4 symmetric per-channel weights, int4 affine per-tensor inputs, LSQ step sizes."""
    weight = QuantSpec(qtype=int4, scheme=Scheme.SYMMETRIC, granularity=PerChannel(0),
                       learnable=learnable)
    act = QuantSpec(qtype=int4, scheme=Scheme.AFFINE, granularity=PerTensor(),
                    learnable=learnable)
    return Recipe((Rule(ByType(("Linear", "Conv2d")), LayerConfig(weight, act)),), "w4a4")


pytestmark = pytest.mark.usefixtures("single_thread")


# ---------------------------------------------------------------------------- toy problems


def toy(seed: int = 0, n_batches: int = 8):
    """A random float MLP teacher (weights x2 for a clear int4 gap), its W4A4 fake-quant
    copy (LSQ), and batches ``(x, y)`` labelled by the teacher's own argmax."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 8)).eval()
    with torch.no_grad():
        for layer in model[::2]:
            layer.weight.mul_(2.0)
    batches = []
    for _ in range(n_batches):
        x = torch.randn(32, 16, generator=g)
        with torch.no_grad():
            batches.append((x, model(x).argmax(-1)))
    fq, _ = quantize_model(model, w4a4(), [x for x, _ in batches[:2]], convert=False)
    return model, fq, batches


def mean_loss(fn, model, batches) -> float:
    """Mean of ``fn(model, x, y)`` over the batches, without grad."""
    with torch.no_grad():
        return sum(float(fn(model, x, y)) for x, y in batches) / len(batches)


def task(model, x, y):
    return F.cross_entropy(model(x), y)


# Six epochs at lr 1e-3 bring each objective (task, KL, MSE, with and without the task term)
# well below its start on the toy model; requiring 0.9 of the start leaves room for noise.
FALLS_TO = 0.9


def test_task_loss_qat_lowers_the_loss_and_leaves_the_teacher_alone():
    teacher, fq, batches = toy()
    teacher_state = copy.deepcopy(teacher.state_dict())
    before = mean_loss(task, fq, batches)
    steps = []
    losses = qat_finetune(fq, batches, nn.CrossEntropyLoss(), epochs=6, lr=1e-3,
                          progress=lambda i, loss: steps.append(i))
    assert len(losses) == 6 * len(batches) and steps == list(range(1, len(losses) + 1))
    after = mean_loss(task, fq, batches)
    assert after < FALLS_TO * before, f"task loss {before:.4f} -> {after:.4f}"
    assert not fq.training, "the model is left in eval mode"
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in teacher_state.items()), \
        "prepare copied the model, so training the student never touches the float model"


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_distillation_with_a_task_loss_lowers_the_combined_loss(kind):
    teacher, fq, batches = toy()
    alpha = 0.5

    def objective(model, x, y):  # what qat_finetune minimises
        return (1 - alpha) * task(model, x, y) + alpha * distill_loss(model(x), teacher(x), kind)

    before = mean_loss(objective, fq, batches)
    qat_finetune(fq, batches, nn.CrossEntropyLoss(), teacher=teacher, distill=kind,
                 alpha=alpha, epochs=6, lr=1e-3)
    after = mean_loss(objective, fq, batches)
    assert after < FALLS_TO * before, f"{kind}: {before:.5f} -> {after:.5f}"


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_pure_distillation_needs_no_labels(kind):
    teacher, fq, batches = toy()
    inputs = [x for x, _ in batches]  # batches are model inputs only

    def gap(model, x, y):
        return distill_loss(model(x), teacher(x), kind)

    before = mean_loss(gap, fq, batches)
    losses = qat_finetune(fq, inputs, teacher=teacher, distill=kind, epochs=6, lr=1e-3)
    assert len(losses) == 6 * len(inputs)
    after = mean_loss(gap, fq, batches)
    assert after < FALLS_TO * before, f"{kind} gap {before:.5f} -> {after:.5f}"


def test_max_steps_and_a_given_optimizer():
    _, fq, batches = toy()
    opt = torch.optim.SGD(fq.parameters(), lr=0.0)
    weights = [p.detach().clone() for p in fq.parameters()]
    losses = qat_finetune(fq, batches, nn.CrossEntropyLoss(), optimizer=opt, max_steps=3,
                          epochs=2)
    assert len(losses) == 3, "max_steps stops early"
    assert all(torch.equal(a, b) for a, b in zip(weights, fq.parameters())), \
        "the given optimizer (lr 0) is the one used"
    assert not fq.training


def test_qat_one_epoch_over_a_generator_is_fine():
    _, fq, batches = toy()
    losses = qat_finetune(fq, (b for b in batches), nn.CrossEntropyLoss(), epochs=1)
    assert len(losses) == len(batches)


# ---------------------------------------------------------------------------- distill_loss


def test_distill_loss_values():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert distill_loss(t, t, "kl").abs() < 1e-6, "a student equal to its teacher has no KL"
    T = 3.0
    p_t = F.softmax(t / T, dim=-1)
    by_hand = (p_t * (p_t.log() - F.log_softmax(s / T, dim=-1))).sum(-1).mean() * T * T
    assert torch.allclose(distill_loss(s, t, "kl", temperature=T), by_hand, atol=1e-6)
    assert torch.equal(distill_loss(s, t, "mse"), ((s - t) ** 2).mean())


def test_distill_loss_rejects_an_unknown_kind():
    with pytest.raises(ConfigError, match="distill.*'kl'"):
        distill_loss(torch.zeros(1, 2), torch.zeros(1, 2), "l1")


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, match", [
    (dict(distill="l2"), "distill.*None or one of"),
    (dict(distill="kl"), "teacher.*exactly when distill is set"),
    (dict(teacher="TEACHER"), "teacher.*exactly when distill is set"),
    (dict(loss_fn=None), "loss_fn.*task loss, or teacher\\+distill"),
    (dict(alpha=1.5), "alpha.*\\[0, 1\\]"),
    (dict(alpha="half"), "alpha"),
    (dict(epochs=0), "epochs"),
    (dict(epochs=1.5), "epochs"),
    (dict(max_steps=0), "max_steps"),
    (dict(lr=0.0), "lr.*> 0"),
    (dict(lr=-1e-3), "lr"),
])
def test_qat_finetune_user_errors(kwargs, match):
    teacher, fq, batches = toy(n_batches=1)
    args = dict(loss_fn=nn.CrossEntropyLoss())
    args.update(kwargs)
    if args.get("teacher") == "TEACHER":
        args["teacher"] = teacher
    with pytest.raises(ConfigError, match=match):
        qat_finetune(fq, batches, **args)


def test_a_one_shot_iterator_cannot_feed_several_epochs():
    """A generator runs out after one epoch; later epochs would silently train on nothing."""
    _, fq, batches = toy(n_batches=1)
    with pytest.raises(ConfigError, match="data.*re-iterable.*list\\(batches\\)"):
        qat_finetune(fq, iter(batches), nn.CrossEntropyLoss(), epochs=2)


# ---------------------------------------------------------------------------- digits: QAT vs PTQ


def test_qat_recovers_digits_accuracy_that_w4a4_ptq_lost(trained_digits):
    """W4A4 (int4 per-channel weights, int4 per-tensor affine inputs, LSQ) on the trained
    digits CNN (committed weights, so PTQ's loss depends only on inference): PTQ loses
    accuracy and raises the test loss; three epochs of QAT win back accuracy and at least a
    quarter of the added loss, and the converted model keeps the QAT model's accuracy.

    The training trajectory itself depends on the CPU's instruction set (the same run won back
    a third of the loss on one CPU class and most of it on another), hence the loose bound."""
    from lowbit.zoo.digits import accuracy, calibration_batches

    model, data, float_acc = trained_digits

    def test_ce(m) -> float:
        with torch.no_grad():
            return F.cross_entropy(m(data.x_test), data.y_test).item()

    fq, _ = quantize_model(model, w4a4(), calibration_batches(data, 8, 64), convert=False)
    ptq_acc, ptq_ce = accuracy(fq, data.x_test, data.y_test), test_ce(fq)
    float_ce = test_ce(model)

    g = torch.Generator().manual_seed(0)
    train = []
    for _ in range(3):
        order = torch.randperm(len(data.x_train), generator=g)
        train += [(data.x_train[order[i:i + 64]], data.y_train[order[i:i + 64]])
                  for i in range(0, len(order), 64)]
    torch.manual_seed(0)
    qat_finetune(fq, train, nn.CrossEntropyLoss(), lr=1e-3)
    qat_acc, qat_ce = accuracy(fq, data.x_test, data.y_test), test_ce(fq)
    real_acc = accuracy(convert(fq), data.x_test, data.y_test)

    numbers = (f"float {float_acc:.2f}% ({float_ce:.3f}), PTQ {ptq_acc:.2f}% ({ptq_ce:.3f}), "
               f"QAT {qat_acc:.2f}% ({qat_ce:.3f})")
    assert ptq_acc < float_acc - 0.6, f"W4A4 PTQ should lose accuracy: {numbers}"
    assert ptq_ce > 1.3 * float_ce, f"W4A4 PTQ should raise the test loss: {numbers}"
    assert qat_acc > ptq_acc, f"QAT should win accuracy back: {numbers}"
    assert qat_ce < ptq_ce - 0.25 * (ptq_ce - float_ce), f"QAT should recover the loss: {numbers}"
    assert real_acc == qat_acc, "the converted model keeps the QAT accuracy"
