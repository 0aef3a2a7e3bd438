"""The distillation loop: loss, mixing, schedule, resume and failure behaviour."""
from __future__ import annotations

import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from compress1img import DistillConfig, RunConfig, TrainingError, TrainingHook, distillation_loss, run_distillation
from compress1img.augment import default_augment, flip_and_shift, mix_batch
from compress1img.devices import autocast_dtype
from compress1img.errors import InputError
from compress1img.report import render_markdown
from compress1img.training import CHECKPOINT_NAME, TrainingInterrupted, cosine_with_warmup, hardest_patches

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def tiny_cnn(seed: int = 0, classes: int = 10) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes))


class RandomPatches:
    """Deterministic stand-in for a patch generator: batch k depends on k only."""
    size = 16

    def __init__(self, interrupt_at: int | None = None):
        self.interrupt_at = interrupt_at

    def batch(self, n: int, index: int) -> torch.Tensor:
        if index == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C during this step
        return torch.rand(n, 3, self.size, self.size, generator=torch.Generator().manual_seed(index))


def test_loss_equals_hand_computed_kl():
    t = torch.tensor([[2.0, 0.0, -1.0]])
    s = torch.tensor([[0.5, 0.5, 0.0]])
    T = 2.0
    p = torch.softmax(t / T, 1)[0]
    q = torch.softmax(s / T, 1)[0]
    by_hand = sum(p[i] * math.log(p[i] / q[i]) for i in range(3)) * T * T
    assert distillation_loss(s, t, temperature=T).item() == pytest.approx(float(by_hand), rel=1e-5)
    assert distillation_loss(s, t, temperature=T, scale_by_t2=False).item() == pytest.approx(float(by_hand) / 4,
                                                                                             rel=1e-5)


def test_loss_is_zero_when_student_equals_teacher_and_positive_otherwise():
    logits = torch.randn(16, 10)
    assert distillation_loss(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert distillation_loss(logits + torch.randn(16, 10), logits).item() > 0


def test_topk_and_hard_signals():
    t = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    s = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    # top-2: the teacher distribution lives on classes 0 and 1 only.
    p = torch.softmax(torch.tensor([5.0, 4.0]) / 8, 0)
    log_q = torch.log_softmax(s / 8, 1)[0]
    by_hand = (p[0] * (p[0].log() - log_q[0]) + p[1] * (p[1].log() - log_q[1])) * 64
    assert distillation_loss(s, t, signal="topk", topk=2).item() == pytest.approx(by_hand.item(), rel=1e-5)
    assert distillation_loss(s, t, signal="hard").item() == pytest.approx(F.cross_entropy(s, torch.tensor([0])).item())


def test_cutmix_pastes_a_box_of_the_reversed_batch_and_mixup_interpolates():
    x = torch.stack([torch.full((3, 8, 8), float(i)) for i in range(4)])
    mixed = mix_batch(x, "cutmix", 0.5, torch.Generator().manual_seed(0))
    for i in range(4):
        values = set(mixed[i].unique().tolist())
        assert values <= {float(i), float(3 - i)} and float(3 - i) in values
    assert torch.allclose(mix_batch(x, "mixup", 0.25, torch.Generator()), 0.25 * x + 0.75 * x.flip(0))
    assert mix_batch(x, "none", 0.5, torch.Generator()) is x


def test_cutmix_per_image_gives_each_image_a_box_of_its_own_size_from_a_partner_of_its_own():
    x = torch.stack([torch.full((3, 16, 16), float(i)) for i in range(16)])
    per_image = default_augment(DistillConfig(mix="cutmix-per-image", mix_alpha=1.0, flip_and_shift=False))
    one_box = default_augment(DistillConfig(mix="cutmix", mix_alpha=1.0, flip_and_shift=False))

    def pasted(mixed: torch.Tensor) -> list[tuple[int, int]]:
        """(partner, pixels taken from it) of each image; (i, 0) where it took none."""
        found = []
        for i, image in enumerate(mixed[:, 0]):
            others = image[image != i]
            assert len(others.unique()) <= 1  # one partner per image
            found.append((int(others[0]) if len(others) else i, len(others)))
        return found

    mixed = pasted(per_image(x, 7))
    assert torch.equal(per_image(x, 7), per_image(x, 7))  # seeded: a resumed run repeats it
    assert len({partner - i for i, (partner, _) in enumerate(mixed)}) > 3  # not one fixed pairing
    assert len({pixels for _, pixels in mixed}) > 3  # boxes of many sizes
    assert [partner for partner, _ in pasted(one_box(x, 7))] == [15 - i for i in range(16)]  # the reversed batch
    assert len({pixels for _, pixels in pasted(one_box(x, 7))}) == 1  # and one box
    assert not torch.equal(per_image(x, 7), per_image(x, 8))


def test_flip_and_shift_is_seeded_and_keeps_shape():
    x = torch.rand(6, 3, 16, 16)
    a = flip_and_shift(x, torch.Generator().manual_seed(1))
    b = flip_and_shift(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, x)


def test_cosine_schedule_with_warmup():
    assert cosine_with_warmup(0, 100, 10) == pytest.approx(0.1)
    assert cosine_with_warmup(9, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(10, 100, 10) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 100, 10) == pytest.approx(0.0, abs=1e-9)


QUIET_CPU = RunConfig(device="cpu", progress=False)


def _train(tmp_path, steps=6, patches=None, resume=False, seed=0, ema=0.0, optimizer="adamw"):
    config = DistillConfig(steps=steps, batch_size=8, ema=ema, optimizer=optimizer)
    run = RunConfig(device="cpu", eval_every=3, checkpoint_every=3, holdout_size=16, resume=resume, seed=seed,
                    progress=False)
    student = tiny_cnn(seed=1)
    if resume:
        student = tiny_cnn(seed=99)  # must be replaced entirely by the checkpoint
    result = run_distillation(tiny_cnn(seed=0), student, patches or RandomPatches(), config, run, mean=MEAN, std=STD,
                              holdout=RandomPatches().batch(16, 10_000), checkpoint_dir=tmp_path)
    return student, result


@pytest.mark.parametrize("optimizer,lr", [("adamw", 1e-2), ("sgd", 0.5)])
def test_training_moves_student_towards_teacher(tmp_path, optimizer, lr):
    config = DistillConfig(steps=40, batch_size=16, lr=lr, optimizer=optimizer)
    holdout = RandomPatches().batch(64, 10_000)
    teacher, student = tiny_cnn(0), tiny_cnn(1)
    from compress1img.evaluate import kl_divergence, predict

    before = kl_divergence(predict(teacher, holdout, MEAN, STD), predict(student, holdout, MEAN, STD))
    result = run_distillation(teacher, student, RandomPatches(), config, RunConfig(device="cpu", eval_every=40,
                                                                                     progress=False),
                              mean=MEAN, std=STD, holdout=holdout)
    assert result.holdout_kl < before / 2
    assert [row["step"] for row in result.history] == [40]


def test_mixed_precision_on_the_cpu_where_it_is_native_and_float32_models_afterwards():
    holdout = RandomPatches().batch(16, 10_000)
    trained = {}
    for amp in (True, False):
        teacher, student = tiny_cnn(0), tiny_cnn(1)
        run_distillation(teacher, student, RandomPatches(), DistillConfig(steps=3, batch_size=8),
                         RunConfig(device="cpu", amp=amp, progress=False), mean=MEAN, std=STD, holdout=holdout)
        # Handed back as they came: float32 weights in the default memory layout (ONNX export expects it).
        for tensor in [*student.parameters(), *teacher.parameters()]:
            assert tensor.dtype == torch.float32 and tensor.is_contiguous()
        trained[amp] = torch.cat([p.detach().flatten() for p in student.parameters()])
    if autocast_dtype(torch.device("cpu")) is None:  # no native bf16: the CPU trains in float32 either way
        assert torch.equal(trained[True], trained[False])
    else:
        assert not torch.equal(trained[True], trained[False])
        torch.testing.assert_close(trained[True], trained[False], rtol=0.05, atol=0.02)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_interrupted_and_resumed_run_ends_with_identical_weights(tmp_path, ema):
    straight, _ = _train(tmp_path / "straight", ema=ema)
    with pytest.raises(TrainingInterrupted, match="--resume"):
        _train(tmp_path / "resumed", patches=RandomPatches(interrupt_at=4), ema=ema)
    saved = torch.load(tmp_path / "resumed" / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 5  # Ctrl-C during step 5 finishes that step, then saves
    assert ("average" in saved) == bool(ema)  # the moving average goes on from where it was
    resumed, result = _train(tmp_path / "resumed", resume=True, ema=ema)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    assert [row["step"] for row in result.history] == [3, 6]


def test_resume_refuses_a_different_configuration(tmp_path):
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, patches=RandomPatches(interrupt_at=1))
    with pytest.raises(Exception, match="seed"):
        _train(tmp_path, resume=True, seed=5)
    with pytest.raises(InputError, match="made with ema=0.0, now ema=0.9"):
        _train(tmp_path, resume=True, ema=0.9)
    with pytest.raises(InputError, match="made with optimizer='adamw', now optimizer='sgd'"):
        _train(tmp_path, resume=True, optimizer="sgd")


def test_sgd_steps_with_momentum_and_its_checkpoint_carries_the_momentum(tmp_path):
    with pytest.raises(TrainingInterrupted):
        _train(tmp_path, patches=RandomPatches(interrupt_at=4), optimizer="sgd")
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    moments = saved["optimizer"]["state"].values()
    assert moments and all("momentum_buffer" in m and "exp_avg" not in m for m in moments)
    assert saved["optimizer"]["param_groups"][0]["nesterov"]


def test_with_ema_the_run_returns_a_moving_average_of_the_weights_and_measures_it():
    from compress1img.evaluate import kl_divergence, predict

    seen = []  # the weights after each optimizer step, as training left them

    class Recorder(TrainingHook):
        def after_step(self, step, student, loss):
            seen.append({k: v.detach().float().clone() for k, v in student.state_dict().items()})

    teacher, student = tiny_cnn(0), tiny_cnn(1)
    expected = {k: v.float().clone() for k, v in student.state_dict().items()}
    holdout = RandomPatches().batch(32, 10_000)
    result = run_distillation(teacher, student, RandomPatches(), DistillConfig(steps=30, batch_size=8, lr=1e-2, ema=0.9),
                              QUIET_CPU, mean=MEAN, std=STD, holdout=holdout, hooks=[Recorder()])
    for step, weights in enumerate(seen, start=1):
        decay = min(0.9, (1 + step) / (10 + step))  # warmed up as in timm's and TensorFlow's EMA
        for key, value in weights.items():
            if key.endswith("num_batches_tracked"):
                expected[key] = value  # a counter is copied, not averaged
            else:
                expected[key] = decay * expected[key] + (1 - decay) * value
    returned = student.state_dict()
    for key, value in expected.items():  # parameters and BatchNorm statistics alike
        torch.testing.assert_close(returned[key].float(), value, msg=key)
    assert not torch.equal(returned["0.weight"], seen[-1]["0.weight"])  # not the last weights
    assert returned["1.num_batches_tracked"] == 30
    # What the run reports was measured on the average it returns.
    assert result.holdout_kl == pytest.approx(kl_divergence(predict(teacher, holdout, MEAN, STD),
                                                            predict(student, holdout, MEAN, STD)), rel=1e-4)


def test_a_sharpness_aware_step_takes_the_gradient_uphill_and_batchnorm_statistics_from_the_first_pass():
    import copy

    from compress1img.evaluate import normalize

    def squared_error(student_logits, teacher_logits):
        return (student_logits - teacher_logits).pow(2).mean()

    def step_once(radius):
        teacher, student = tiny_cnn(0), tiny_cnn(1)
        # SGD: AdamW would blow the conv bias's gradient up, which is rounding noise (BatchNorm follows the conv).
        run_distillation(teacher, student, RandomPatches(), DistillConfig(steps=1, batch_size=8, lr=0.1,
                                                                          optimizer="sgd", sharpness_radius=radius),
                         RunConfig(device="cpu", progress=False, amp=False), mean=MEAN, std=STD,
                         holdout=RandomPatches().batch(4, 10_000), loss_fn=squared_error, augment=lambda x, seed: x)
        return student

    # By hand (SAM, Foret et al. 2021): the gradient at the weights 0.5 along the first gradient, applied to the
    # weights as they were; the running statistics are one update by the batch at those weights.
    teacher, expected = tiny_cnn(0).eval(), tiny_cnn(1)
    x = normalize(RandomPatches().batch(8, 0), MEAN, STD)  # the first step's batch
    params = list(expected.parameters())
    first = torch.autograd.grad(squared_error(expected(x), teacher(x)), params)
    statistics = copy.deepcopy(dict(expected[1].named_buffers()))
    norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in first]))
    with torch.no_grad():
        for p, g in zip(params, first):
            p.add_(g * 0.5 / norm)
    uphill = torch.autograd.grad(squared_error(expected(x), teacher(x)), params)
    with torch.no_grad():
        for p, g, climbed in zip(params, first, uphill):
            p.sub_(g * 0.5 / norm)
            p.grad = climbed
    torch.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True).step()
    expected[1].load_state_dict(statistics, strict=False)

    stepped = step_once(0.5)
    for (name, value), want in zip(stepped.state_dict().items(), expected.state_dict().values()):
        torch.testing.assert_close(value, want, msg=name)
    plain = step_once(0.0)
    assert not torch.allclose(plain[0].weight, stepped[0].weight)
    torch.testing.assert_close(plain[1].running_mean, stepped[1].running_mean)


class NanTeacher(nn.Module):
    def forward(self, x):
        return torch.full((len(x), 10), float("nan"))


def test_nan_loss_stops_with_advice(tmp_path):
    config = DistillConfig(steps=3, batch_size=4)
    with pytest.raises(TrainingError, match="lower --lr"):
        run_distillation(NanTeacher(), tiny_cnn(), RandomPatches(), config, QUIET_CPU, mean=MEAN, std=STD,
                         holdout=RandomPatches().batch(4, 99), checkpoint_dir=tmp_path)


@pytest.mark.parametrize("field,value", [("steps", 0), ("batch_size", 1), ("lr", -1.0), ("temperature", 0.0),
                                         ("mix", "blend"), ("teacher_signal", "logits"), ("ema", 1.0),
                                         ("ema", -0.1), ("optimizer", "adam"), ("sharpness_radius", -0.1),
                                         ("sharpness_radius", float("inf"))])
def test_a_bad_setting_is_refused_when_the_config_is_made_naming_the_field(field, value):
    from compress1img import ConfigError, InputError

    with pytest.raises(ConfigError, match=rf"^DistillConfig\.{field} ") as error:
        DistillConfig(**{field: value})
    assert isinstance(error.value, InputError) and error.value.field == field


def test_run_settings_are_checked_when_made_too():
    from compress1img import ConfigError

    with pytest.raises(ConfigError, match=r"^RunConfig\.holdout_size must be at least 1 \(got 0\)"):
        RunConfig(holdout_size=0)


def test_the_loop_takes_its_loss_augmentation_and_hooks_as_arguments():
    calls = {"loss": 0, "augment": [], "steps": [], "started": 0, "ended": 0}

    def squared_error(student_logits, teacher_logits):
        calls["loss"] += 1
        return (student_logits.float() - teacher_logits.float()).pow(2).mean()

    def no_augmentation(x, seed):
        calls["augment"].append(seed)
        return x

    class Recorder(TrainingHook):
        def on_start(self, teacher, student):
            calls["started"] += 1

        def after_step(self, step, student, loss):
            calls["steps"].append(step)

        def on_end(self, student):
            calls["ended"] += 1

    teacher, student = tiny_cnn(0), tiny_cnn(1)
    holdout = RandomPatches().batch(16, 10_000)
    result = run_distillation(teacher, student, RandomPatches(), DistillConfig(steps=4, batch_size=8, lr=1e-2),
                              QUIET_CPU, mean=MEAN, std=STD, holdout=holdout, loss_fn=squared_error,
                              augment=no_augmentation, hooks=[Recorder()])
    assert calls["loss"] == 4 and calls["steps"] == [1, 2, 3, 4] and calls["started"] == calls["ended"] == 1
    assert len(set(calls["augment"])) == 4  # every step its own seed
    assert result.final_loss > 0


class Brightness(nn.Module):
    """A teacher more confident in class 0 the brighter the patch."""

    def forward(self, x):
        return F.pad(10 * x.mean((1, 2, 3))[:, None], (0, 9))


class Undecided(nn.Module):
    """A student that has learned nothing yet: the same logits for every patch."""

    def forward(self, x):
        return torch.zeros(len(x), 10)


def test_the_hardest_patches_are_those_the_student_gets_most_wrong_in_the_order_drawn():
    patches = torch.stack([torch.full((3, 4, 4), level) for level in (0.55, 0.9, 0.6, 0.8)])
    kept = hardest_patches(patches, 2, teacher=Brightness(), student=Undecided(), temperature=8.0, mean=MEAN, std=STD)
    assert kept[:, 0, 0, 0].tolist() == pytest.approx([0.9, 0.8])


def test_with_hardest_of_each_step_draws_k_times_the_batch_and_trains_on_one_batch_of_them():
    drawn, trained = [], []

    class Counted(RandomPatches):
        def batch(self, n, index):
            drawn.append(n)
            return super().batch(n, index)

    def counted_kl(student_logits, teacher_logits):
        trained.append((len(student_logits), student.training))
        return distillation_loss(student_logits, teacher_logits, temperature=8.0)

    teacher, student = tiny_cnn(0), tiny_cnn(1)
    run_distillation(teacher, student, Counted(), DistillConfig(steps=3, batch_size=8, hardest_of=3), QUIET_CPU,
                     mean=MEAN, std=STD, holdout=RandomPatches().batch(16, 10_000), loss_fn=counted_kl)
    assert drawn == [24, 24, 24]
    assert trained == [(8, True)] * 3  # and the student trains in train mode after being scored in eval mode
    from compress1img.cli.options import build

    with pytest.raises(InputError, match=r"^--hardest-of must be at least 1 \(got 0\)$"):  # as the CLI says it
        build(DistillConfig, {"hardest_of": 0})


def test_matching_features_trains_the_last_feature_map_towards_the_teachers_and_keeps_the_classifier():
    from compress1img.mimicry import feature_layer

    teacher, student = tiny_cnn(0), tiny_cnn(1)
    student[5].load_state_dict(teacher[5].state_dict())  # a pruned copy keeps the teacher's classifier
    holdout = RandomPatches().batch(32, 10_000)
    assert feature_layer(teacher, holdout[:2]) == "2"  # the ReLU: the last output with more than one position

    def map_distance():
        with torch.no_grad():
            x = (holdout - 0.5) / 0.25
            return F.mse_loss(student[:3].eval()(x), teacher[:3].eval()(x)).item()

    before = map_distance()
    run_distillation(teacher, student, RandomPatches(), DistillConfig(steps=60, batch_size=16, lr=1e-2,
                                                                      match="features"),
                     QUIET_CPU, mean=MEAN, std=STD, holdout=holdout)
    assert map_distance() < before / 2
    assert torch.equal(student[5].weight, teacher[5].weight)  # frozen while it trained ...
    assert all(p.requires_grad for p in student.parameters())  # ... and trainable again afterwards


def test_matching_features_needs_a_feature_map_the_cut_left_as_it_was():
    narrower = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(InputError, match=r"^--match features needs the last feature map \(2\) to keep its shape"):
        run_distillation(tiny_cnn(0), narrower, RandomPatches(), DistillConfig(steps=1, batch_size=4,
                                                                               match="features"),
                         QUIET_CPU, mean=MEAN, std=STD, holdout=RandomPatches().batch(4, 10_000))


def test_a_new_student_with_the_teachers_feature_map_learns_it_through_a_frozen_copy_of_the_classifier(tiny_teacher):
    from compress1img import RunConfig, distill, load_model

    teacher = load_model(tiny_teacher)
    result = distill(teacher, "cifar_resnet20", "coffee", DistillConfig(steps=2, batch_size=8),  # match="auto"
                     run=RunConfig(holdout_size=16, progress=False))
    assert result.report["match"] == "features" and result.report["config"]["distill"]["match"] == "features"
    assert torch.equal(result.model.module.linear.weight, teacher.module.linear.weight)  # the teacher's, kept
    assert all(p.requires_grad for p in result.model.module.parameters())  # trainable again afterwards
    assert "learning the teacher's last feature map" in render_markdown("distill", result.report)


def test_a_new_student_whose_feature_map_differs_from_the_teachers_learns_the_logits(tiny_teacher, tmp_path):
    from compress1img import distill

    result = distill(tiny_teacher, "wrn_16_4", "coffee", DistillConfig(steps=1, batch_size=4),
                     run=RunConfig(holdout_size=8, progress=False))
    assert result.report["match"] == "logits"  # by default; asked for features, it is refused before any training
    with pytest.raises(InputError, match=r"^--match features needs a student whose last feature map has the "
                                         r"teacher's shape, \(64, 8, 8\) \(layer3\); the student's \(relu\) "
                                         r"is \(256, 8, 8\): use --match logits$"):
        distill(tiny_teacher, "wrn_16_4", "coffee", DistillConfig(steps=1, batch_size=4, match="features"),
                run=RunConfig(out=tmp_path / "run", holdout_size=8, progress=False))
    assert not (tmp_path / "run").exists()  # nothing left behind


def test_topk_signal_has_finite_gradients():
    student = torch.randn(4, 10, requires_grad=True)
    distillation_loss(student, torch.randn(4, 10), signal="topk", topk=3).backward()
    assert torch.isfinite(student.grad).all()
