"""Pruning: budgets met and reported exactly, layouts honoured, models that reload, clear refusals."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from compress1img import DistillConfig, InputError, RunConfig, evaluate_model, load_model, prune
from compress1img.api import BUNDLED_TEACHER, bundled_teacher
from compress1img.models import create_model_from_name
from compress1img.pruning import (PruneConfig, PruningError, count, fold_masks, make_prunable, prune_to_budget,
                                sparsify, weight_sparsity)
from cli_run import run_cli

# 256 held-out patches: what these tests compare moves by tens of points, and the default 1,024 cost seconds a run.
QUIET = RunConfig(progress=False, holdout_size=256)


def budget_prune(model: nn.Module, size: int, sparsity: float, **options) -> tuple[int, int, nn.Module]:
    example = torch.zeros(1, 3, size, size)
    base = count(model, example)[1]
    pruned = copy.deepcopy(model)
    make_prunable(pruned)
    config = PruneConfig(sparsity=sparsity, **options)
    prune_to_budget(pruned, example, config, int(base * (1 - sparsity)), 10, reference=base)
    return base, count(pruned, example)[1], pruned


def test_option_a_shortcuts_become_convolutions_with_identical_outputs():
    model = bundled_teacher().module
    converted = copy.deepcopy(model)
    assert make_prunable(converted) == ["option_a_shortcut_to_conv"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), converted(x))


@pytest.mark.parametrize("name,size,sparsity,options", [
    ("cifar_resnet20", 32, 0.5, {}),
    ("cifar_resnet20", 32, 0.3, {}),
    ("tv:resnet18", 64, 0.5, {}),
    ("timm:efficientnet_b0", 32, 0.4, {"allocation": "uniform", "round_to": 8}),
    ("timm:convnext_atto", 32, 0.5, {})])
def test_requested_sparsity_is_met_within_one_point(name, size, sparsity, options):
    torch.manual_seed(0)
    model, _ = create_model_from_name(name, num_classes=10)
    base, after, pruned = budget_prune(model.eval(), size, sparsity, **options)
    assert abs((1 - after / base) - sparsity) <= 0.01
    assert pruned(torch.randn(2, 3, size, size)).shape == (2, 10)


def test_vision_transformer_heads_are_narrowed_and_rebuild_from_saved_shapes():
    import timm

    from compress1img.models.transforms import resize_to_state_dict

    def tiny_vit():
        return timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10).eval()

    torch.manual_seed(0)
    base, after, pruned = budget_prune(tiny_vit(), 32, 0.3, round_to=8)
    assert abs((1 - after / base) - 0.3) <= 0.01
    attention = [block.attn for block in pruned.blocks]
    assert any(a.head_dim < 64 for a in attention)
    for a in attention:
        assert a.num_heads == 3 and a.head_dim % 8 == 0 and a.qkv.out_features == 3 * a.num_heads * a.head_dim
    rebuilt = tiny_vit()
    resize_to_state_dict(rebuilt, pruned.state_dict())
    rebuilt.load_state_dict(pruned.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), pruned(x))


@pytest.mark.parametrize("importance", ["taylor", "bn"])
def test_every_importance_prunes_a_cifar_resnet_to_budget(importance):
    model = copy.deepcopy(bundled_teacher().module)
    make_prunable(model)  # frozen shortcut convs: no gradients of their own
    example = torch.zeros(1, 3, 32, 32)
    base = count(model, example)[1]
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        target = model(x)

    def loss(m: nn.Module) -> torch.Tensor:
        return nn.functional.mse_loss(m(x), target + 1)

    prune_to_budget(model, example, PruneConfig(sparsity=0.4, importance=importance), int(base * 0.6), 10,
                    reference=base, loss_fn=loss)
    assert abs((1 - count(model, example)[1] / base) - 0.4) <= 0.01


def test_round_to_is_honoured_and_stem_and_classifier_are_kept():
    model = bundled_teacher().module
    _, _, pruned = budget_prune(model, 32, 0.5, round_to=8)
    convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 8 == 0 for c in convs)
    assert convs[0].out_channels == 16 and pruned.linear.out_features == 10


def test_internal_channels_keep_every_residual_stream():
    model = bundled_teacher().module
    _, _, kept = budget_prune(model, 32, 0.4, channels="internal", round_to=8)
    _, _, cut = budget_prune(model, 32, 0.4, channels="all", round_to=8)
    stream = {name: m.out_channels for name, m in model.named_modules() if name.endswith("conv2")}
    assert {name: m.out_channels for name, m in kept.named_modules() if name.endswith("conv2")} == stream
    assert {name: m.out_channels for name, m in cut.named_modules() if name.endswith("conv2")} != stream
    inner = [m.out_channels for name, m in kept.named_modules() if name.endswith("conv1") and "layer" in name]
    assert all(c % 8 == 0 for c in inner) and sum(inner) < sum(
        m.out_channels for name, m in model.named_modules() if name.endswith("conv1") and "layer" in name)


def test_unreachable_budget_with_a_fixed_layout_is_a_clear_error():
    with pytest.raises(InputError, match="within 1 point"):
        budget_prune(bundled_teacher().module, 32, 0.3, round_to=16, allocation="uniform")


def test_unstructured_sparsity_is_exact_and_folded():
    model = copy.deepcopy(bundled_teacher().module)
    sparsify(model, 0.5)
    sparsify(model, 0.75)  # a schedule: the second step keeps the first step's zeros
    fold_masks(model)
    assert weight_sparsity(model) == pytest.approx(0.75, abs=1e-4)
    assert not any(name.endswith("_orig") for name, _ in model.named_parameters())


@pytest.mark.parametrize("value", [0, 1, -0.1, 1.5])
def test_impossible_sparsity_is_refused(value):
    with pytest.raises(InputError, match=r"^PruneConfig\.sparsity is the fraction"):
        PruneConfig(sparsity=value)


def test_ignored_layer_must_exist():
    with pytest.raises(InputError, match="layer1.0.conv9"):
        budget_prune(bundled_teacher().module, 32, 0.5, ignore=("layer1.0.conv9",))


class Unprunable(nn.Module):
    """Channels reshaped by hand: no dependency graph can follow this."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.mix = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.mix(self.conv(x))
        x = x.view(len(x), 4, 4, 32, 32).mean(dim=(3, 4))  # groups channels by hand
        return self.head(x.flatten(1))


def test_a_model_torch_pruning_cannot_follow_is_a_clear_error():
    with pytest.raises((PruningError, InputError)) as excinfo:
        budget_prune(Unprunable().eval(), 32, 0.5)
    assert "\n" not in str(excinfo.value)


def test_prune_cli_writes_a_smaller_model_that_reloads_and_exports(tmp_path, test_slice):
    out = tmp_path / "run"
    result = run_cli("prune", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--sparsity", "0.5", "--iterations", "2",
                     "--steps", "4", "--batch-size", "16", "--optimizer", "sgd", "--lr", "0.05",
                     "--holdout-size", "64", "--image", "coffee", "--eval-data", test_slice, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "speed-up" in result.stdout and "50" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["heal"]["optimizer"] == "sgd" and report["config"]["heal"]["lr"] == 0.05
    assert abs(report["params_removed"] - 0.5) <= 0.01
    assert [row["iteration"] for row in report["per_iteration"]] == [1, 2]
    assert report["heal_match"] == "features"  # by default a pruned copy heals on the teacher's last feature map
    assert report["onnx_max_abs_diff"] < 1e-3
    assert report["speedup_b32"] > 0 and report["latency_ms"]["dense"]["b1_ms"] > 0
    assert not (out / ".work").exists()

    reloaded = load_model(out / "model.pt")
    assert sum(p.numel() for p in reloaded.module.parameters()) == report["params_after"]
    assert evaluate_model(reloaded, test_slice)["top1"] == pytest.approx(report["pruned_top1"])
    assert evaluate_model(out / "model.onnx", test_slice)["top1"] == pytest.approx(report["pruned_top1"])


def test_each_healing_of_an_iterated_prune_goes_on_to_new_patches():
    seen = []

    def record(x, seed):  # the loop's augmentation receives each batch of patches as drawn
        seen.append(x.clone())
        return x

    prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.5, iterations=2),
          heal=DistillConfig(steps=4, batch_size=8), run=RunConfig(holdout_size=16, device="cpu", progress=False),
          augment=record, measure_latency=False)
    assert len(seen) == 4  # two steps after each cut
    assert all(not torch.equal(seen[i], seen[j]) for i in range(4) for j in range(i))


def test_a_model_frozen_by_an_earlier_run_still_prunes():
    model = bundled_teacher()
    model.module.requires_grad_(False)  # what serving as a distillation teacher leaves behind
    result = prune(model, "coffee", PruneConfig(sparsity=0.3, reconstruct_patches=0), heal=None, run=QUIET,
                   measure_latency=False)
    assert abs(result.report["params_removed"] - 0.3) <= 0.01


def test_prune_cli_refuses_impossible_sparsity_without_writing(tmp_path):
    for value in ("1.5", "0", "abc"):
        bad = run_cli("prune", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--sparsity", value,
                      "--out", tmp_path / "bad")
        assert bad.returncode == 2 and "--sparsity" in bad.stderr, bad.stderr
        assert not (tmp_path / "bad").exists()


def test_unstructured_cli_reports_zeroed_weights_and_no_speed_up(tmp_path):
    out = tmp_path / "u"
    result = run_cli("prune", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--mode", "unstructured", "--sparsity",
                     "0.5", "--steps", "2", "--batch-size", "8", "--holdout-size", "64", "--image", "coffee",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    assert "weights zeroed" in result.stdout and "no faster" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["weight_sparsity"] == pytest.approx(0.5, abs=1e-4)
    assert weight_sparsity(load_model(out / "model.pt").module) == pytest.approx(0.5, abs=1e-4)


def test_droppable_blocks_are_the_shape_keeping_residual_blocks():
    from compress1img.pruning import droppable_blocks

    r20 = bundled_teacher().module
    # Three stages of three blocks; the first block of stages 2 and 3 changes the shape.
    assert droppable_blocks(r20, torch.zeros(1, 3, 32, 32)) == [
        "layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]
    assert "layer2.1" not in droppable_blocks(r20, torch.zeros(1, 3, 32, 32), ignore=("layer2.1.conv2",))
    resnet18, _ = create_model_from_name("tv:resnet18", num_classes=10)
    assert droppable_blocks(resnet18, torch.zeros(1, 3, 64, 64)) == [
        "layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]


def test_dropped_blocks_count_towards_the_budget_and_reload(tmp_path, test_slice):
    run = RunConfig(out=tmp_path / "run", holdout_size=64, eval_every=2, checkpoint_every=2, device="cpu",
                    progress=False)
    report = prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.5, drop_blocks=2),
                   heal=DistillConfig(steps=2, batch_size=8), run=run, eval_data=test_slice,
                   measure_latency=False).report
    assert len(report["dropped_blocks"]) == 2
    assert "reconstruction" not in report["per_iteration"][0]  # healing follows: no repair by default
    assert abs(report["params_removed"] - 0.5) <= 0.01
    reloaded = load_model(tmp_path / "run" / "model.pt")
    for name in report["dropped_blocks"]:
        assert isinstance(reloaded.module.get_submodule(name), nn.Identity)
    assert sum(p.numel() for p in reloaded.module.parameters()) == report["params_after"]
    assert evaluate_model(reloaded, test_slice)["top1"] == pytest.approx(report["pruned_top1"])


def test_dropping_more_blocks_than_exist_or_than_the_budget_is_refused():
    from compress1img.pruning import BudgetError

    with pytest.raises(BudgetError, match="has only 7 blocks that can be dropped"):
        prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.5, drop_blocks=8), heal=None, run=QUIET,
              measure_latency=False)
    # Dropping every droppable block removes ~73% of ResNet-20's parameters: more than the 30% asked.
    with pytest.raises(BudgetError, match=r"each block left would take away more params than the budget \(--sparsity"):
        prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.3, drop_blocks=7), heal=None, run=QUIET,
              measure_latency=False)
    with pytest.raises(InputError, match="drop_blocks needs mode structured"):
        PruneConfig(mode="unstructured", drop_blocks=1)


def test_named_blocks_are_dropped_instead_of_chosen(tmp_path):
    from compress1img.pruning import BudgetError

    # The layout of an earlier run, or one's own: these blocks go, in this order, and channels remove the rest.
    config = PruneConfig(sparsity=0.5, blocks_to_drop=("layer3.2", "layer1.1"), reconstruct_patches=0)
    report = prune(bundled_teacher(), "coffee", config, heal=None, run=QUIET, measure_latency=False).report
    assert report["dropped_blocks"] == ["layer3.2", "layer1.1"]
    assert abs(report["params_removed"] - 0.5) <= 0.01
    with pytest.raises(InputError, match=r"^--drop-block layer2\.0: not a block that can be dropped .*this model's: "
                                         r"layer1\.0, layer1\.1, layer1\.2, layer2\.1"):
        prune(bundled_teacher(), "coffee", PruneConfig(blocks_to_drop=("layer1.0", "layer2.0")), heal=None,
              run=dataclasses.replace(QUIET, out=tmp_path / "run"), measure_latency=False)
    assert not (tmp_path / "run").exists()  # refused before any work
    every = ("layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2")
    with pytest.raises(BudgetError, match=r"^--drop-block: the 7 blocks named take away more params than the budget"):
        prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.3, blocks_to_drop=every), heal=None, run=QUIET,
              measure_latency=False)
    with pytest.raises(InputError, match="blocks_to_drop names the blocks that drop_blocks would choose"):
        PruneConfig(drop_blocks=1, blocks_to_drop=("layer1.1",))
    with pytest.raises(InputError, match="blocks_to_drop names a block more than once: layer1.1"):
        PruneConfig(blocks_to_drop=("layer1.1", "layer1.1"))


def test_blocks_inside_a_dropped_block_are_not_dropped_again():
    from compress1img.models.transforms import apply_transforms
    from compress1img.pruning import BudgetError, drop_blocks, drop_named_blocks, droppable_blocks

    def model():
        def block():
            return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
        return nn.Sequential(nn.Sequential(block(), block()), nn.Conv2d(4, 4, 1))

    example = torch.zeros(1, 4, 8, 8)
    assert droppable_blocks(model(), example) == ["0", "0.0", "0.1"]

    def parameters_left(m):  # a "loss" that makes the biggest block the cheapest to drop
        return torch.tensor(float(sum(p.numel() for p in m.parameters())))

    pruned = model()
    assert [row["block"] for row in drop_blocks(pruned, 1, parameters_left, example)] == ["0"]
    rebuilt = model()
    apply_transforms(rebuilt, ["drop_block:0"])
    assert isinstance(rebuilt[0], nn.Identity)
    with pytest.raises(BudgetError, match="after dropping 1, no block is left to drop"):
        drop_blocks(model(), 2, parameters_left, example)
    # Within a budget the cheapest block that fits goes: the whole stage would leave too few parameters.
    total, small = sum(p.numel() for p in model().parameters()), sum(p.numel() for p in model()[0][0].parameters())
    assert [row["block"] for row in drop_blocks(model(), 1, parameters_left, example,
                                                keep_at_least=total - small)] == ["0.0"]
    with pytest.raises(BudgetError, match="after dropping 1, each block left would take away more params"):
        drop_blocks(model(), 2, parameters_left, example, keep_at_least=total - small)
    # Named, a block inside another named one would go twice.
    with pytest.raises(InputError, match=r"^--drop-block 0\.1: it lies inside another block named"):
        drop_named_blocks(model(), ("0", "0.1"), parameters_left, example)


def test_least_squares_repair_recovers_a_layer_that_only_used_the_kept_channels():
    from compress1img.reconstruction import reconstruct, repairable_layers

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1),
                            nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    with torch.no_grad():
        teacher[2].weight[:, 4:] = 0  # the channels the cut will remove carry nothing downstream
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                            nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    with torch.no_grad():
        student[0].weight.copy_(teacher[0].weight[:4])
        student[0].bias.copy_(teacher[0].bias[:4])
        student[4].load_state_dict(teacher[4].state_dict())
    batches = [torch.randn(64, 3, 8, 8) for _ in range(2)]
    # Only the layer that lost inputs and kept its outputs; the first conv lost outputs, the classifier nothing.
    assert repairable_layers(student, teacher, batches[0][:1]) == ["2"]
    result = reconstruct(student, teacher, batches)
    assert result["layers"] == 1 and result["patches"] == 128
    assert result["error_before"] > 0.5 and result["error_after"] < 1e-3
    torch.testing.assert_close(student[2].weight, teacher[2].weight[:, :4], rtol=0.05, atol=0.01)
    torch.testing.assert_close(student[2].bias, teacher[2].bias, rtol=0.05, atol=0.01)
    x = torch.randn(16, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(student(x), teacher(x), rtol=0.05, atol=0.05)


def test_the_repair_is_the_same_however_many_layers_share_a_teacher_pass(monkeypatch):
    from compress1img import reconstruction

    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).eval()
    # Narrower first and third convs: the second conv and the classifier lost inputs and kept their outputs.
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                            nn.Conv2d(8, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
    batches = [torch.randn(32, 3, 8, 8) for _ in range(3)]
    monkeypatch.setattr(reconstruction, "MAX_ROWS_PER_BATCH", 500)  # a conv's 2,048 rows a batch: a sample of them

    def repaired(target_bytes: int):
        monkeypatch.setattr(reconstruction, "TARGET_BYTES", target_bytes)
        model = copy.deepcopy(student)
        return model.state_dict(), reconstruction.reconstruct(model, teacher, batches)

    (together, report), (apart, report_apart) = repaired(2**30), repaired(1)  # one teacher pass, or one per layer
    assert report == report_apart and report["layers"] == 2 and report["error_after"] < report["error_before"]
    assert all(torch.equal(together[name], apart[name]) for name in together)
    assert not torch.equal(together["2.weight"], student.state_dict()["2.weight"])


def test_repair_after_the_cut_brings_the_pruned_model_closer_to_the_original(test_slice):

    def cut(patches: int) -> dict:
        result = prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.5, reconstruct_patches=patches),
                       heal=None, run=QUIET, eval_data=test_slice, measure_latency=False)
        return result.report["per_iteration"][0]

    plain, repaired = cut(0), cut(None)  # without healing the repair is on by default
    assert "reconstruction" not in plain
    repair = repaired["reconstruction"]
    # The second conv of each of ResNet-20's 9 blocks whose inner channels were cut.
    assert 0 < repair["layers"] <= 9 and repair["patches"] == 1024
    assert repair["error_after"] < repair["error_before"]
    assert repaired["top1_after_cut"] == plain["top1_after_cut"]
    assert repaired["holdout_agreement_after_repair"] > repaired["holdout_agreement_after_cut"] + 10
    assert repaired["top1_after_repair"] > repaired["top1_after_cut"] + 10
    with pytest.raises(InputError, match="reconstruct_patches must be"):
        PruneConfig(reconstruct_patches=-1)


def test_the_api_takes_an_nn_module_and_gives_the_pruned_module_back(tmp_path):

    module = copy.deepcopy(bundled_teacher().module)
    module.input_size, module.mean, module.std = (3, 32, 32), bundled_teacher().mean, bundled_teacher().std
    params = sum(p.numel() for p in module.parameters())
    result = prune(module, "coffee", PruneConfig(sparsity=0.3, reconstruct_patches=0), heal=None, run=QUIET,
                   measure_latency=False)
    pruned = result.model.module
    assert sum(p.numel() for p in pruned.parameters()) == result.report["params_after"] < params
    assert sum(p.numel() for p in module.parameters()) == params  # the caller's module is left as it was
    assert result.report["model"] == "CifarResNet (nn.Module)" and result.int8_onnx is None

    with pytest.raises(InputError, match=r"does not declare its input size: set `sequential.input_size"):
        prune(nn.Sequential(nn.Flatten(), nn.LazyLinear(10)), "coffee", heal=None, run=QUIET)
    # Its class needs constructor arguments nothing records: the pruned model is saved as a program.
    prune(module, "coffee", PruneConfig(sparsity=0.3, reconstruct_patches=0), heal=None,
          run=dataclasses.replace(QUIET, out=tmp_path / "run"), measure_latency=False)
    assert not (tmp_path / "run" / "model.pt").exists()
    assert load_model(tmp_path / "run" / "model.pt2").num_classes == 10


def test_healing_matches_the_logits_where_the_cut_changed_the_last_feature_map_and_a_loss_of_ones_own_replaces_it():
    streams_cut = PruneConfig(sparsity=0.3, channels="all")  # the residual streams too: a narrower last feature map
    result = prune(bundled_teacher(), "coffee", streams_cut, heal=DistillConfig(steps=2, batch_size=8), run=QUIET,
                   measure_latency=False)
    assert result.report["heal_match"] == "logits"
    def squared_error(student_logits, teacher_logits):
        return (student_logits - teacher_logits).square().mean()

    own_loss = prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.3), heal=DistillConfig(steps=2, batch_size=8),
                     run=QUIET, measure_latency=False, loss_fn=squared_error)
    assert own_loss.report["heal_match"] == "auto"  # a loss of one's own replaces the match: none was resolved
    with pytest.raises(InputError, match=r"^--match features needs the last feature map \(layer3\) to keep its shape"):
        prune(bundled_teacher(), "coffee", streams_cut, heal=DistillConfig(steps=2, batch_size=8, match="features"),
              run=QUIET, measure_latency=False)
