"""Timing in ONNX Runtime at the threads and batch sizes a deployment uses, and ONNX files against each other."""
from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from compress1img import RunConfig, prune
from compress1img.api import BUNDLED_TEACHER, bundled_teacher
from compress1img.export import export_onnx
from compress1img.latency import LatencyConfig
from compress1img.pruning import PruneConfig


def conv_net(width: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)).eval()


@pytest.fixture(scope="module")
def two_onnx_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench")
    for name, width in (("wide.onnx", 64), ("narrow.onnx", 8)):
        export_onnx(conv_net(width), folder / name, input_size=(3, 16, 16), mean=(0.5,) * 3, std=(0.25,) * 3)
    return folder / "wide.onnx", folder / "narrow.onnx"


def bench(capsys, *args) -> str:
    from compress1img.cli import main

    main(["bench", *map(str, args)])
    return capsys.readouterr().out


def test_bench_times_files_against_the_first_at_the_batch_sizes_asked(capsys, two_onnx_files):
    wide, narrow = two_onnx_files
    result = json.loads(bench(capsys, wide, narrow, "--batches", "1,4", "--threads", "1", "--repeats", "2",
                              "--json"))
    assert (result["threads"], result["rounds"], result["input_size"]) == (1, 2, [3, 16, 16])
    first, second = result["models"]
    assert (first["file"], second["file"]) == (str(wide), str(narrow))
    assert first["speedup_b1"] == first["speedup_b4"] == 1.0
    assert second["speedup_b4"] == pytest.approx(first["b4_ms"] / second["b4_ms"])
    assert second["speedup_b4"] > 1  # 8 channels against 64: far less arithmetic

    table = bench(capsys, wide, narrow, "--batches", "2", "--threads", "1", "--repeats", "1").splitlines()
    assert table[0].startswith("ONNX Runtime, 1 thread, median of 1 interleaved rounds")
    assert table[1].split() == ["b2", "ms", "b2", "speed-up", "file"]
    assert table[2].endswith(f"1.00x  {wide}") and table[3].endswith(f"  {narrow}")


def test_without_threads_onnx_runtime_takes_as_many_as_torch_was_given(capsys, two_onnx_files):
    # OMP_NUM_THREADS (or torch.set_num_threads) bounds ONNX Runtime too: two runs side by side, each given one
    # core, must not both time on every core.
    threads = torch.get_num_threads()
    try:
        for given in (1, 2):
            torch.set_num_threads(given)
            result = json.loads(bench(capsys, *two_onnx_files, "--batches", "1", "--repeats", "1", "--json"))
            assert result["threads"] == given
    finally:
        torch.set_num_threads(threads)


def test_bench_refuses_batches_a_file_cannot_take_and_bad_options_in_one_line(cli, tmp_path, two_onnx_files):
    fixed = tmp_path / "batch1.onnx"
    with warnings.catch_warnings():  # the exporter's deprecation notes
        warnings.simplefilter("ignore")
        torch.onnx.export(conv_net(8), (torch.zeros(1, 3, 16, 16),), str(fixed), input_names=["input"], dynamo=False)
    wide, _ = two_onnx_files
    assert cli("bench", wide, fixed, "--batches", "1,8") == (
        2, [f"error: {fixed} takes batches of exactly 1 only: time it with --batches 1"])
    assert cli("bench", wide, "--batches", "1,x") == (
        2, ["error: --batches takes comma-separated batch sizes like 1,32 (got '1,x')"])
    assert cli("bench", wide, "--repeats", "0") == (2, ["error: --repeats must be at least 1 (got 0)"])


def test_a_run_times_its_models_at_the_threads_and_batches_given():
    timing = LatencyConfig(threads=1, batches=(2, 8), rounds=1)
    report = prune(bundled_teacher(), "coffee", PruneConfig(sparsity=0.3, reconstruct_patches=0), heal=None,
                   run=RunConfig(progress=False, holdout_size=64), timing=timing).report
    assert report["latency_threads"] == 1
    assert set(report["latency_ms"]) == {"dense", "pruned"}
    assert list(report["latency_ms"]["pruned"]) == ["b2_ms", "b8_ms"]
    assert report["speedup_b8"] == pytest.approx(report["latency_ms"]["dense"]["b8_ms"]
                                                 / report["latency_ms"]["pruned"]["b8_ms"])
    assert "speedup_b32" not in report


def test_latency_options_are_checked_before_any_work(cli, tmp_path):
    model = (BUNDLED_TEACHER, "--arch", "cifar_resnet20", "--out", tmp_path / "run")
    assert cli("prune", *model, "--latency-batches", "1,1") == (
        2, ["error: --latency-batches must be different batch sizes of 1 or more, like 1,32 (got (1, 1))"])
    assert cli("quantize", *model, "--latency-threads", "0") == (2, ["error: --latency-threads must be at least 1 "
                                                                     "(got 0)"])
    assert not (tmp_path / "run").exists()
