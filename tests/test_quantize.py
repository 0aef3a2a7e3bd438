"""Int8: graphs ONNX Runtime runs in int8 end to end, faithful to PyTorch, reloadable, and clear refusals."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import onnx
import pytest
import torch
from torch import nn

from compress1img import InputError, evaluate_model, load_model
from compress1img.api import BUNDLED_TEACHER, bundled_teacher
from compress1img import PTQConfig, QATConfig, RunConfig, quantize
from compress1img.evaluate import agreement, predict
from compress1img.quantization import (QAT_LR, QuantizationError, int8_coverage, prepare_qat,
                                       runtime_ops)
from compress1img.training import DistillConfig
from cli_run import run_cli

TINY_QAT = QATConfig(training=DistillConfig(steps=6, batch_size=32, lr=QAT_LR))


def quiet(out=None, **changes) -> RunConfig:
    return RunConfig(out=out, eval_every=3, holdout_size=64, progress=False, **changes)


def op_types(path: Path) -> set[str]:
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def largest_int8_weight(onnx_bytes: bytes) -> int:
    """The largest |value| among the graph's int8 constants (the weights its DequantizeLinear nodes read)."""
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load_from_string(onnx_bytes).graph.initializer
               if t.data_type == onnx.TensorProto.INT8]
    assert weights
    return max(int(abs(w.astype(int)).max()) for w in weights)


@pytest.fixture(scope="module")
def qat_run(tmp_path_factory, test_slice):
    out = tmp_path_factory.mktemp("qat") / "run"
    result = quantize(bundled_teacher(), "coffee", TINY_QAT, run=quiet(out), eval_data=test_slice)
    return out, result.report


def test_qat_graph_runs_every_conv_and_add_in_int8(qat_run):
    out, report = qat_run
    coverage = report["quantization"]
    assert coverage["int8_convs"] == 19 and coverage["float_convs"] == 0  # ResNet-20: 19 convs
    assert coverage["int8_adds"] == 9 and coverage["float_adds"] == 0
    assert {"QuantizeLinear", "DequantizeLinear"} <= op_types(out / "model.onnx")
    assert runtime_ops((out / "model.onnx").read_bytes()).get("QLinearConv") == 19


def test_qat_trains_with_the_papers_mixing_on_patches(qat_run):
    _, report = qat_run
    training = report["config"]["quantize"]["training"]
    assert (report["image_mode"], training["mix"], training["mix_alpha"]) == ("patches", "cutmix", 0.25)


def test_int8_weights_use_seven_bits_so_that_cpus_without_vnni_compute_the_same_logits(qat_run):
    out, report = qat_run
    # AVX2's uint8 x int8 multiply-add saturates at 32767: 255 x 63 x 2 fits, 255 x 127 x 2 does not.
    assert 32 < largest_int8_weight((out / "model.onnx").read_bytes()) <= 63


def test_qat_folds_a_conv_s_batchnorm_into_it_and_leaves_the_others_computing_the_same():
    from torchao.quantization.pt2e import move_exported_model_to_eval

    from compress1img.quantization import capture, fold_batch_norms

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.plain = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
            self.biased = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
            self.after_add = nn.BatchNorm2d(8)  # reads a sum, not a conv: stays a BatchNorm

        def forward(self, x):
            y = self.plain(x)
            return self.after_add(self.biased(y) + y).mean((2, 3))

    torch.manual_seed(0)
    net = Net()
    for bn in (net.plain[1], net.biased[1], net.after_add):  # statistics of a trained model, not 0 and 1
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
    net.eval()
    graph = move_exported_model_to_eval(capture(net, (3, 8, 8)))  # as prepare_qat runs it: statistics frozen
    assert fold_batch_norms(graph) == 2
    norms = [n for n in graph.graph.nodes if n.target is torch.ops.aten.batch_norm.default]
    assert len(norms) == 1
    x = torch.randn(4, 3, 8, 8)
    assert torch.allclose(graph(x), net(x), atol=1e-5)
    assert all(p.requires_grad for p in graph.parameters())  # the folded weights and biases train
    assert net.plain[0].bias is None  # the model given is untouched


def test_qat_int8_file_is_about_four_times_smaller(qat_run):
    out, report = qat_run
    # int8 weights; the float biases, scales and graph are the rest (a bigger share in a small model).
    assert report["onnx_bytes"] < report["dense_onnx_bytes"] / 3


def test_qat_int8_model_stays_close_to_the_teacher(qat_run, test_slice):
    out, report = qat_run
    # A few steps only; the int8 model must still behave like the fp32 one it came from.
    assert report["test_agreement"] >= 90
    assert abs(report["top1_change"]) <= 4
    assert evaluate_model(out / "model.onnx", test_slice)["top1"] == pytest.approx(report["final_top1"])


def test_fake_quant_onnx_and_reloaded_int8_models_agree(qat_run, test_slice):
    out, report = qat_run
    assert report["quantization"]["fake_quant_vs_int8_agreement"] >= 85
    assert report["onnx_top1_agreement_vs_pytorch"] >= 90
    reloaded = load_model(out / "model.pt2")
    assert reloaded.mean == bundled_teacher().mean and reloaded.num_classes == 10
    torch_top1 = evaluate_model(reloaded, test_slice)["top1"]
    assert torch_top1 == pytest.approx(report["final_top1"], abs=2.0)
    assert not (out / ".work").exists()


def test_ptq_quantizes_a_tiny_model_end_to_end(tmp_path, test_slice):
    out = tmp_path / "ptq"
    result = quantize(bundled_teacher(), "coffee", PTQConfig(calibration_size=64), run=quiet(out),
                      eval_data=test_slice, measure_latency=False)
    report = result.report
    assert runtime_ops(result.int8_onnx).get("QLinearConv") == 19  # the int8 graph comes back too
    assert largest_int8_weight(result.int8_onnx) <= 64  # ONNX Runtime's reduce_range, as QAT's 7 bits
    assert report["quantization"]["float_convs"] == 0 and report["quantization"]["int8_convs"] == 19
    assert report["test_agreement"] >= 90 and report["onnx_top1_agreement_vs_pytorch"] >= 80
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "patches.png", "report.json", "report.md"]


def test_a_ptq_model_that_disagrees_with_the_float_model_is_not_written(tmp_path, monkeypatch):
    import compress1img.stages as stages
    from compress1img.export import ExportError

    monkeypatch.setattr(stages, "PTQ_MIN_AGREEMENT", 100.1)  # unreachable: the check must refuse
    out = tmp_path / "ptq"
    with pytest.raises(ExportError, match="not written"):
        quantize(bundled_teacher(), "coffee", PTQConfig(calibration_size=32), run=quiet(out), measure_latency=False)
    assert not (out / "model.onnx").exists()


class SqueezeExcitation(nn.Module):
    """Conv, SiLU, a squeeze-excitation gate averaging with ReduceMean (as timm's EfficientNet does), a linear head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.act = nn.SiLU()
        self.gate = nn.Conv2d(16, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = x * torch.sigmoid(self.gate(x.mean((2, 3), keepdim=True)))
        return self.head(x.mean((2, 3)))


def test_ptq_keeps_squeeze_excitation_means_in_int8():
    from compress1img.export import onnx_model_bytes
    from compress1img.quantization import ptq_onnx_bytes, spatial_means_as_pools
    from compress1img.runtime import ort_session

    torch.manual_seed(0)
    float_onnx = onnx_model_bytes(SqueezeExcitation().eval(), (3, 16, 16))
    rewritten = spatial_means_as_pools(float_onnx)
    onnx.checker.check_model(onnx.load_from_string(rewritten))
    # Only the kept-dims mean of the gate is a global pool; the head's flattening mean is another shape.
    assert [n.op_type for n in onnx.load_from_string(rewritten).graph.node].count("GlobalAveragePool") == 1
    x = torch.randn(5, 3, 16, 16).numpy()
    before, after = (ort_session(b).run(None, {"input": x})[0] for b in (float_onnx, rewritten))
    assert abs(before - after).max() < 1e-5
    ops = runtime_ops(ptq_onnx_bytes(float_onnx, torch.randn(64, 3, 16, 16)))
    assert ops.get("QLinearGlobalAveragePool") == 1 and ops.get("ReduceMean") == 1


def test_ptq_leaves_the_nodes_named_in_keep_float_in_float():
    from compress1img.export import onnx_model_bytes
    from compress1img.quantization import ptq_onnx_bytes

    torch.manual_seed(0)
    float_onnx = onnx_model_bytes(SqueezeExcitation().eval(), (3, 16, 16))
    convs = [n.name for n in onnx.load_from_string(float_onnx).graph.node if n.op_type == "Conv"]
    calibration = torch.randn(64, 3, 16, 16)
    everything = int8_coverage(runtime_ops(ptq_onnx_bytes(float_onnx, calibration)))
    one_float = int8_coverage(runtime_ops(ptq_onnx_bytes(float_onnx, calibration, keep_float=convs[:1])))
    assert (everything["int8_convs"], everything["float_convs"]) == (len(convs), 0)
    assert (one_float["int8_convs"], one_float["float_convs"]) == (len(convs) - 1, 1)


def test_qat_runs_silu_and_squeeze_excitation_in_int8():
    from torchao.quantization.pt2e import disable_fake_quant

    from compress1img.quantization import calibrate, convert, int8_onnx_bytes, onnx_runner

    torch.manual_seed(0)
    model = SqueezeExcitation().eval()
    x = torch.randn(8, 3, 16, 16)
    prepared = prepare_qat(model, (3, 16, 16))
    calibrate(prepared, torch.randn(64, 3, 16, 16))
    without_fake_quant = copy.deepcopy(prepared)
    without_fake_quant.apply(disable_fake_quant)
    assert not model.training  # capturing it left the caller's model as it was
    with torch.no_grad():  # SiLU rewritten as x * sigmoid(x) computes the same function
        assert torch.allclose(without_fake_quant(x), model(x), atol=1e-6)
        converted = convert(prepared)
        int8 = int8_onnx_bytes(converted, (3, 16, 16))
        assert (onnx_runner(int8)(x) - converted(x)).abs().max() < 0.05
    ops = runtime_ops(int8)
    assert ops.get("QLinearSigmoid") == 2 and ops.get("QLinearMul") == 2 and ops.get("QLinearGlobalAveragePool") == 1
    assert not {"Sigmoid", "Mul", "Conv"} & ops.keys()


class DataDependent(nn.Module):
    """Python control flow on tensor values: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.conv(x)
        if x.mean() > 0:
            x = x * 2
        return self.head(x.mean((2, 3)))


def test_a_model_torch_export_cannot_capture_is_a_clear_error():
    with pytest.raises(QuantizationError, match="--method ptq") as excinfo:
        prepare_qat(DataDependent(), (3, 16, 16))
    assert "\n" not in str(excinfo.value)


def test_bad_quantize_settings_are_refused_in_the_api_and_under_their_option_names_in_the_cli(tmp_path, cli):
    with pytest.raises(InputError, match=r"^PTQConfig\.calibration_size must be a positive number"):
        PTQConfig(calibration_size=0)
    with pytest.raises(InputError, match=r"^QATConfig\.training must be a DistillConfig"):
        QATConfig(training={"steps": 3})
    model = (BUNDLED_TEACHER, "--arch", "cifar_resnet20")
    assert cli("quantize", *model, "--method", "fp8", "--out", tmp_path / "a") == (
        2, ["error: --method must be one of qat, ptq (got 'fp8')"])
    assert cli("quantize", *model, "--calibration-size", "0", "--out", tmp_path / "b") == (
        2, ["error: --calibration-size must be a positive number of patches (got 0)"])
    assert cli("compress", *model, "--qat-steps", "0", "--out", tmp_path / "c") == (
        2, ["error: --qat-steps must be at least 1 (got 0)"])
    assert not any(tmp_path.iterdir())


def test_quantize_cli_refuses_no_int8_without_writing(tmp_path):
    bad = run_cli("quantize", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--no-int8", "--out", tmp_path / "bad")
    assert bad.returncode == 2 and "int8" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_compress_cli_prunes_then_quantizes_and_quantize_takes_the_pruned_model(tmp_path, test_slice):
    out = tmp_path / "both"
    result = run_cli("compress", BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--sparsity", "0.5", "--int8",
                     "--steps", "3", "--qat-steps", "3", "--batch-size", "16", "--image", "coffee", "--ema", "0.9",
                     "--holdout-size", "64", "--calibration-size", "64", "--latency-batches", "8",  # one size: seconds
                     "--eval-data", test_slice, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "int8" in result.stdout and "speed-up" in result.stdout
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "compress" and abs(report["params_removed"] - 0.5) <= 0.01
    assert report["quantization"]["float_convs"] == 0
    assert set(report["latency_ms"]) == {"dense", "pruned", "int8"}
    assert {"model.onnx", "model.pt2", "pruned.pt", "report.json", "report.md"} <= {p.name for p in out.iterdir()}
    # --ema applies to both trainings, the healing and quantization-aware training of the int8 graph.
    assert report["config"]["heal"]["ema"] == report["config"]["quantize"]["training"]["ema"] == 0.9
    assert (out / "report.md").read_text().count("(the moving average of its weights kept, decay 0.9)") == 2

    pruned = load_model(out / "pruned.pt")
    assert sum(p.numel() for p in pruned.module.parameters()) == report["params_after"]
    again = run_cli("quantize", out / "pruned.pt", "--method", "ptq", "--calibration-size", "32", "--image", "coffee",
                    "--holdout-size", "64", "--latency-batches", "8", "--out", tmp_path / "again")
    assert again.returncode == 0, again.stderr
    assert json.loads((tmp_path / "again" / "report.json").read_text())["quantization"]["float_convs"] == 0


def test_the_int8_program_reloads_in_a_fresh_process(qat_run, test_slice):
    # The int8 ops are registered by the quantization code; a new process that only loads the file must work too.
    out, report = qat_run
    result = run_cli("eval", out / "model.pt2", "--data", test_slice, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top1"] == pytest.approx(report["final_top1"], abs=2.0)


def test_reloaded_int8_program_predicts_like_the_onnx_file(qat_run):
    out, _ = qat_run
    program = load_model(out / "model.pt2")
    onnx_model = load_model(out / "model.onnx")  # run by ONNX Runtime, preprocessing from the file's metadata
    assert (onnx_model.mean, onnx_model.std) == (program.mean, program.std)
    images = torch.rand(128, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    torch_logits = predict(program.module, images, program.mean, program.std)
    onnx_logits = predict(onnx_model.module, images, onnx_model.mean, onnx_model.std)
    assert agreement(torch_logits, onnx_logits) >= 90
    assert (torch_logits - onnx_logits).abs().max() < 0.25 * torch_logits.abs().max()


def test_a_failed_qat_run_resumes_without_training_again(tmp_path, monkeypatch):
    import compress1img.stages as compress_module

    out = tmp_path / "resumed"
    real_export = compress_module.int8_onnx_bytes

    def failing_export(*args, **kwargs):
        raise QuantizationError("simulated failure after training")

    monkeypatch.setattr(compress_module, "int8_onnx_bytes", failing_export)
    with pytest.raises(QuantizationError, match="simulated"):
        quantize(bundled_teacher(), "coffee", TINY_QAT, run=quiet(out), measure_latency=False)
    assert (out / ".work" / "qat" / "checkpoint.pt").exists() and not (out / "model.onnx").exists()

    monkeypatch.setattr(compress_module, "int8_onnx_bytes", real_export)
    calls = []
    real_step = torch.optim.AdamW.step
    monkeypatch.setattr(torch.optim.AdamW, "step", lambda self, *a, **k: calls.append(1) or real_step(self, *a, **k))
    report = quantize(bundled_teacher(), "coffee", TINY_QAT, run=quiet(out, resume=True),
                      measure_latency=False).report
    assert calls == []  # the checkpoint was at the last step: nothing retrained
    assert report["quantization"]["float_convs"] == 0 and (out / "model.onnx").exists()
    assert not (out / ".work").exists()


def logits_op(onnx_bytes: bytes, tmp_path: Path) -> tuple[str, int]:
    """(op type, weight dtype) of what computes the logits in the graph ONNX Runtime runs, fully optimised."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    producers = {output: node for node in graph.node for output in node.output}
    node = producers[graph.output[0].name]
    while node.op_type in ("DequantizeLinear", "Reshape", "Flatten"):
        node = producers[node.input[0]]
    weights = {i.name: i.data_type for i in graph.initializer}
    return node.op_type, weights.get(node.input[1] if node.op_type != "QGemm" else node.input[3])


def test_ptq_keeps_the_classifier_named_in_keep_float_in_float_with_the_calibration_chosen(tmp_path):
    model = bundled_teacher()  # a CIFAR ResNet-20: its classifier is `linear`
    int8 = quantize(model, "coffee", PTQConfig(calibration_size=32), run=quiet(), measure_latency=False)
    kept = quantize(model, "coffee", PTQConfig(calibration_size=32, calibration="entropy", keep_float=("linear",)),
                    run=quiet(), measure_latency=False)
    assert logits_op(int8.int8_onnx, tmp_path)[0] == "QGemm"
    assert logits_op(kept.int8_onnx, tmp_path) in (("Gemm", onnx.TensorProto.FLOAT),
                                                   ("MatMul", onnx.TensorProto.FLOAT))
    details = kept.report["quantization"]
    assert details["kept_float"] == ["linear"] and details["calibration"] == "entropy"
    assert details["int8_convs"] == 19 and details["float_convs"] == 0


def test_qat_keeps_layers_of_a_type_or_a_block_in_float():
    config = QATConfig(training=DistillConfig(steps=2, batch_size=16, lr=QAT_LR), keep_float=("Linear", "layer3.2"))
    result = quantize(bundled_teacher(), "coffee", config, run=quiet(), measure_latency=False)
    details = result.report["quantization"]
    assert details["kept_float"][:1] == ["layer3.2"] and "linear" in details["kept_float"]
    assert (details["int8_convs"], details["float_convs"]) == (17, 2)  # layer3.2's two convs stay float
    assert (details["int8_adds"], details["float_adds"]) == (8, 1)
    assert "QGemm" not in runtime_ops(result.int8_onnx)


def test_percentile_calibration_clips_the_ranges_minmax_keeps_whole():
    from onnx import numpy_helper

    from compress1img.export import onnx_model_bytes
    from compress1img.quantization import ptq_onnx_bytes

    def input_scale(onnx_bytes: bytes) -> float:
        graph = onnx.load_from_string(onnx_bytes).graph
        first = next(n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] == graph.input[0].name)
        return float(numpy_helper.to_array(next(i for i in graph.initializer if i.name == first.input[1])))

    torch.manual_seed(0)
    float_onnx = onnx_model_bytes(SqueezeExcitation().eval(), (3, 16, 16))
    calibration = torch.randn(64, 3, 16, 16)
    minmax = input_scale(ptq_onnx_bytes(float_onnx, calibration))
    assert input_scale(ptq_onnx_bytes(float_onnx, calibration, method="percentile")) < minmax


def test_a_keep_float_name_the_model_lacks_or_an_option_of_the_other_method_fails_at_once_in_one_line(cli, tmp_path):
    model = (BUNDLED_TEACHER, "--arch", "cifar_resnet20")
    code, err = cli("quantize", *model, "--keep-float", "fc", "--out", tmp_path / "a")
    assert code == 2 and len(err) == 1
    assert err[0].startswith("error: --keep-float 'fc' names no layer or layer type of the model: its layers are "
                             "named like conv1, bn1, relu, ..., linear; its layer types are ")
    assert cli("quantize", *model, "--calibration", "entropy", "--out", tmp_path / "b") == (
        2, ["error: --calibration applies to --method ptq: quantization-aware training learns its ranges"])
    assert cli("quantize", *model, "--method", "ptq", "--calibration", "kl", "--out", tmp_path / "c") == (
        2, ["error: --calibration must be one of minmax, percentile, entropy (got 'kl')"])
    assert cli("quantize", *model, "--method", "ptq", "--steps", "100", "--lr", "0.01", "--out", tmp_path / "d") == (
        2, ["error: --steps, --lr apply to --method qat: post-training quantization (--method ptq) does not train "
            "(its option is --calibration-size)"])
    recipe = tmp_path / "qat-recipe.toml"
    recipe.write_text("method = 'qat'\nsteps = 300\n")
    assert cli("quantize", *model, "--recipe", recipe, "--method", "ptq", "--out", tmp_path / "e") == (
        2, ["error: --steps (from the recipe) applies to --method qat: post-training quantization (--method ptq) "
            "does not train (its option is --calibration-size)"])
    assert [p.name for p in tmp_path.iterdir()] == ["qat-recipe.toml"]  # no run wrote an output folder
