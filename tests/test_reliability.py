"""Reliability as a user meets it: a corpus of bad inputs run through the command line, kill and resume,
out-of-memory advice and the ONNX parity check. docs/reliability.md tabulates what each case shows."""
from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import signal
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from compress1img import export_onnx, load_model
from compress1img.export import ExportError, onnx_model_bytes
from compress1img.outputs import prepare_out_dir
from cli_run import Result, run_cli

# One thread per run: the arithmetic is the same in every run, and a 2-core machine shared with
# other work does not thrash (two OpenMP threads on one free core made healing 40x slower).
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def run(*args, cwd: Path | None = None, timeout: float = 300):
    """`compress1img ARGS` as a user runs it, one thread, with its peak memory."""
    return run_cli(*args, cwd=cwd, timeout=timeout, env=ENV)


def run_here(*args, cwd: Path) -> Result:
    """`compress1img ARGS` in this process, in `cwd`, one thread: what `run` gives but the peak memory, without
    a new interpreter's start-up (most of a refused run's seconds)."""
    from compress1img.cli import main

    logger = logging.getLogger("compress1img")
    saved = logger.handlers[:], logger.propagate, logger.level, torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.chdir(cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            torch.set_num_threads(1)
            try:
                main([str(a) for a in args])
                code = 0  # a command that succeeds returns
            except SystemExit as e:
                code = e.code or 0
    finally:
        logger.handlers[:], logger.propagate, logger.level = saved[:3]
        torch.set_num_threads(saved[3])
    return Result(code, out.getvalue(), err.getvalue(), peak_mb=float("nan"))


# --- the corpus --------------------------------------------------------------------------------------------------

@dataclass
class Case:
    id: str
    args: tuple[str, ...]      # run in the corpus folder; {out} is this case's own output directory
    needles: tuple[str, ...]   # what the message must say: the problem and the file
    code: int = 2
    unchanged: str | None = None   # a path the run must leave exactly as it was
    absent: tuple[str, ...] = ()   # paths the run must not create
    needs_no_gpu: bool = False

    @property
    def out(self) -> str:
        return f"out-{self.id}"


def patches_case(id: str, image: str, *needles: str, code: int = 2) -> Case:
    """Image cases use the cheapest command that loads an image."""
    return Case(id, ("patches", image, "--count", "2", "--out", "{out}/p.npy"), needles, code)


# A folder the runs cannot write into. Root writes through permission bits: then a path under a regular file.
UNWRITABLE = "notes.txt" if os.geteuid() == 0 else "locked"
TRAIN = ("--image", "coffee", "--steps", "1", "--batch-size", "4", "--device", "cpu")


def prune_case(id: str, args: tuple[str, ...], *needles: str, **options) -> Case:
    return Case(id, ("prune", *TRAIN, *args, "--out", options.pop("out", "{out}")), needles, **options)


def option_case(id: str, *args: str, needles: tuple[str, ...] = (), **options) -> Case:
    return prune_case(id, ("teacher.pt", *args), *(needles or (args[0],)), **options)


CASES = [
    # images
    patches_case("truncated_jpeg", "cut.jpg", "cannot read image cut.jpg"),
    patches_case("zero_byte_image", "empty.jpg", "image empty.jpg is empty (0 bytes)"),
    patches_case("text_file_named_jpg", "notes.jpg", "cannot read image notes.jpg", "not an image"),
    patches_case("directory_as_image", "folder.jpg", "image folder.jpg is a directory"),
    patches_case("missing_image", "nope.jpg", "image not found: nope.jpg"),
    patches_case("unsupported_format", "image.pcx", "cannot read image image.pcx", "supported format"),
    patches_case("broken_image_unicode_path", "my photos/été 壊れ.png", "cannot read image my photos/été 壊れ.png"),
    patches_case("huge_image_20000x20000", "huge.png", "image huge.png is too large", "downscale it first"),
    # not errors, by design
    patches_case("one_pixel_image", "dot.png", "dot.png is only 1x1; upscaled", code=0),
    patches_case("animated_gif", "anim.gif", "anim.gif has 2 frames; using the first", code=0),
    patches_case("png_16_bit", "deep.png", "from deep.png", code=0),
    patches_case("cmyk_jpeg", "cmyk.jpg", "from cmyk.jpg", code=0),
    patches_case("image_path_with_spaces_and_unicode", "my photos/café 写真.png", "from my photos/café 写真.png",
                 code=0),
    # models
    prune_case("model_missing", ("missing.pt",), "model file missing.pt not found"),
    prune_case("model_is_a_directory", ("folder.jpg",), "folder.jpg is a directory, not a model file"),
    prune_case("model_random_bytes", ("random.pt",), "random.pt is not a PyTorch model file"),
    prune_case("model_text_file", ("notes.txt",), "notes.txt is not a PyTorch model file"),
    prune_case("state_dict_for_wrong_arch", ("r20_weights.th", "--arch", "cifar_resnet32"),
               "weights file r20_weights.th does not fit cifar_resnet32: layer1.3.conv1.weight is missing"),
    prune_case("state_dict_without_arch", ("r20_weights.th",), "r20_weights.th holds only weights", "--arch"),
    prune_case("onnx_given_as_model", ("model.onnx",), "cannot prune model.onnx (ONNX): ONNX models run but have no "
                                                        "layers", "pass its weights with --arch"),
    prune_case("torchscript_pruned", ("flat.ts", "--input-size", "32", "--mean", "0.5,0.5,0.5", "--std",
                                      "0.2,0.2,0.2"), "cannot prune flat.ts (TorchScript model)",
               "pass its weights with --arch"),
    prune_case("onnx_renamed_pt", ("onnx_renamed.pt",), "onnx_renamed.pt is not a PyTorch model file"),
    prune_case("crafted_pickle", ("evil.pt", "--arch", "cifar_resnet20"), "evil.pt contains pickled Python objects",
               "--trust-model", absent=("pwned",)),
    prune_case("pickled_module", ("module.pt",), "module.pt contains pickled Python objects (torch.nn",
               "--trust-model"),
    prune_case("input_size_mismatch", ("flat.ts", "--input-size", "64", "--mean", "0.5,0.5,0.5", "--std",
                                       "0.2,0.2,0.2"), "model flat.ts does not accept 3x64x64 input"),
    Case("patch_size_mismatch", ("distill", "--teacher", "teacher.pt", "--student", "cifar_resnet20", "--patches",
                                 "p16.npy", "--device", "cpu", "--out", "{out}"),
         ("patch file p16.npy has 16 px patches, the teacher expects 32 px",)),
    # evaluation data
    option_case("eval_data_wrong_shape", "--eval-data", "gray.npz",
                needles=("eval data gray.npz: images must be (N, H, W, 3)",)),
    option_case("eval_data_wrong_dtype", "--eval-data", "float.npz",
                needles=("eval data float.npz: images must be uint8", "float32")),
    option_case("eval_data_negative_labels", "--eval-data", "negative.npz",
                needles=("eval data negative.npz has negative labels",)),
    option_case("eval_labels_beyond_model_classes", "--eval-data", "labels99.npz",
                needles=("eval data labels99.npz", "labels up to 99 but the model has 10 classes")),
    option_case("eval_class_count_differs", "--eval-data", "twelve.npz",
                needles=("eval data twelve.npz", "names 12 classes but the model has 10")),
    option_case("eval_image_size_differs", "--eval-data", "small16.npz",
                needles=("eval data small16.npz has 16x16 images, the model expects 32x32",)),
    option_case("eval_data_missing", "--eval-data", "nothing.npz", needles=("eval data nothing.npz not found",)),
    option_case("eval_data_not_npz", "--eval-data", "labels.csv",
                needles=("eval data labels.csv is neither an .npz",)),
    # options
    option_case("sparsity_0", "--sparsity", "0", needles=("--sparsity", "(got 0.0)")),
    option_case("sparsity_1", "--sparsity", "1", needles=("--sparsity", "(got 1.0)")),
    option_case("sparsity_negative", "--sparsity", "-0.1", needles=("--sparsity", "(got -0.1)")),
    option_case("sparsity_1.5", "--sparsity", "1.5", needles=("--sparsity", "(got 1.5)")),
    option_case("sparsity_abc", "--sparsity", "abc", needles=("Invalid value for '--sparsity'",)),
    option_case("steps_0", "--steps", "0", needles=("--steps must be at least 1 (got 0)",)),
    option_case("batch_size_1", "--batch-size", "1", needles=("--batch-size must be at least 2",)),
    option_case("misspelt_option", "--sparsty", "0.5", needles=("No such option: --sparsty",)),
    option_case("device_cuda_without_gpu", "--device", "cuda", needles=("--device cuda", "no CUDA GPU"),
                needs_no_gpu=True),
    # output directory
    option_case("out_dir_exists", needles=("--out earlier-run already exists", "--overwrite"), out="earlier-run",
                unchanged="earlier-run"),
    option_case("out_dir_unwritable", needles=("cannot write to --out",), out="{unwritable}/run",
                absent=("{unwritable}/run",)),
    option_case("out_is_a_file", needles=("--out ok.png exists and is not a directory",), out="ok.png",
                unchanged="ok.png"),
    Case("patches_out_unwritable", ("patches", "coffee", "--count", "2", "--out", "{unwritable}/p.npy"),
         ("cannot write --out {unwritable}/p.npy",), absent=("{unwritable}/p.npy",)),
    option_case("drop_blocks_beyond_the_model", "--drop-blocks", "8",
                needles=("--drop-blocks 8: this model has only 7 blocks that can be dropped",)),
    option_case("drop_block_not_a_block", "--drop-block", "layer2.0",
                needles=("--drop-block layer2.0: not a block that can be dropped",)),
    option_case("reconstruct_patches_negative", "--reconstruct-patches", "-1",
                needles=("--reconstruct-patches must be a number of patches, 0 (no repair) or more (got -1)",)),
    option_case("lr_scaling_unknown", "--lr-scaling", "cube",
                needles=("--lr-scaling must be one of none, sqrt, linear (got 'cube')",)),
    option_case("sharpness_radius_negative", "--sharpness-radius", "-0.5",
                needles=("--sharpness-radius is a distance in weight space, 0 for plain steps (got -0.5)",)),
    # several processes
    Case("nproc_0", ("--nproc", "0", "patches", "coffee", "--count", "2", "--out", "{out}/p.npy"),
         ("--nproc must be at least 1 (got 0)",)),
    Case("nproc_for_a_command_that_does_not_train", ("--nproc", "2", "patches", "coffee", "--count", "2", "--out",
                                                     "{out}/p.npy"),
         ("--nproc applies to distill, prune, quantize, compress, demo, not patches",)),
    # score-image: every image is checked before the first is scored
    Case("score_image_one_image_missing", ("score-image", "coffee", "nope.jpg", "--preview", "{out}/p.png"),
         ("image not found: nope.jpg",)),
    Case("score_image_patches_1", ("score-image", "coffee", "--patches", "1", "--preview", "{out}/p.png"),
         ("--patches must be at least 2 (got 1)",)),
    Case("score_image_classes_file_missing", ("score-image", "coffee", "--classes", "names.txt", "--preview",
                                              "{out}/p.png"), ("cannot read --classes names.txt",)),
    Case("score_image_preview_unwritable", ("score-image", "coffee", "--preview", "{unwritable}/p.png"),
         ("cannot write --preview {unwritable}/p.png",), absent=("{unwritable}/p.png",)),
]


def write_huge_png(path: Path, side: int) -> None:
    """A real side x side greyscale PNG, streamed row by row: it never exists as pixels in this process."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    pack = zlib.compressobj(9)
    row = bytes(side + 1)  # filter byte + black pixels
    pixels = b"".join(pack.compress(row) for _ in range(side)) + pack.flush()
    header = side.to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


class _CreatesFile:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tiny_teacher) -> Path:
    """Every bad input, generated here: nothing is downloaded."""
    root = tmp_path_factory.mktemp("corpus")
    noise = np.random.default_rng(0).integers(0, 256, (128, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "whole.jpg")
    data = (root / "whole.jpg").read_bytes()
    (root / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "empty.jpg").write_bytes(b"")
    (root / "notes.jpg").write_text("this is not a picture\n")
    (root / "folder.jpg").mkdir()
    Image.fromarray(noise).save(root / "image.pcx")
    (root / "my photos").mkdir()
    Image.fromarray(noise).save(root / "my photos" / "café 写真.png")
    (root / "my photos" / "été 壊れ.png").write_bytes((root / "my photos" / "café 写真.png").read_bytes()[:200])
    write_huge_png(root / "huge.png", 20_000)
    Image.new("RGB", (1, 1), (1, 2, 3)).save(root / "dot.png")
    frames = [Image.fromarray(noise), Image.new("RGB", (128, 128), (0, 0, 255))]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:], duration=100)
    Image.fromarray((noise[..., 0].astype(np.uint16) * 257)).save(root / "deep.png")
    assert Image.open(root / "deep.png").mode == "I;16"
    Image.fromarray(noise).convert("CMYK").save(root / "cmyk.jpg")
    Image.fromarray(noise).save(root / "ok.png")

    (root / "teacher.pt").write_bytes(tiny_teacher.read_bytes())
    teacher = load_model(tiny_teacher)
    torch.save(teacher.module.state_dict(), root / "r20_weights.th")
    (root / "random.pt").write_bytes(np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    (root / "notes.txt").write_text("these are not weights\n")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)).eval()
    export_onnx(flat, root / "model.onnx", input_size=(3, 32, 32), mean=(0.5,) * 3, std=(0.2,) * 3)
    (root / "onnx_renamed.pt").write_bytes((root / "model.onnx").read_bytes())
    torch.save({"state_dict": _CreatesFile(str(root / "pwned"))}, root / "evil.pt")
    torch.save(flat, root / "module.pt")
    torch.jit.script(flat).save(str(root / "flat.ts"))
    np.save(root / "p16.npy", np.zeros((2000, 16, 16, 3), np.uint8))

    def npz(name: str, images: np.ndarray, labels, **extra) -> None:
        np.savez(root / name, images=images, labels=np.asarray(labels), **extra)

    rgb = np.zeros((4, 32, 32, 3), np.uint8)
    npz("gray.npz", rgb[..., 0], [0, 1, 2, 3])
    npz("float.npz", rgb.astype(np.float32), [0, 1, 2, 3])
    npz("negative.npz", rgb, [0, 1, 2, -1])
    npz("labels99.npz", rgb, [0, 1, 2, 99])
    npz("twelve.npz", rgb, [0, 1, 2, 3], classes=np.array([f"class{i}" for i in range(12)]))
    npz("small16.npz", rgb[:, :16, :16], [0, 1, 2, 3])
    (root / "labels.csv").write_text("image,label\n")

    (root / "earlier-run").mkdir()
    (root / "earlier-run" / "report.json").write_text('{"command": "prune"}\n')
    (root / "earlier-run" / "my-notes.txt").write_text("mine\n")
    if UNWRITABLE == "locked":
        (root / "locked").mkdir()
        (root / "locked").chmod(0o500)
    yield root
    if UNWRITABLE == "locked":
        (root / "locked").chmod(0o700)


def snapshot(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"" for p in sorted(path.rglob("*"))}


def resolve(case: Case, text: str) -> str:
    return text.replace("{out}", case.out).replace("{unwritable}", UNWRITABLE)


@pytest.fixture(scope="module")
def corpus_results(request, corpus) -> dict[str, tuple[Result, dict[str, bytes]]]:
    """Run the selected cases, in this process one after the other, but those whose peak memory is measured,
    which run as users run them, two at a time; returns each case's result with a snapshot of its
    `unchanged` path taken before it ran. (Each case in its own process took three times as long, most of it
    Python and torch starting up: the command-line tests elsewhere start the real process.)"""
    wanted = {item.callspec.params["case"].id for item in request.session.items
              if getattr(item, "originalname", None) == "test_corpus_case" and hasattr(item, "callspec")}
    if "huge_image_20000x20000" in wanted:
        wanted.add("missing_image")  # its peak memory is the baseline of the huge image's
    cases = [c for c in CASES if c.id in wanted and not (c.needs_no_gpu and torch.cuda.is_available())]

    def one(case: Case, runner=run) -> tuple[Result, dict[str, bytes]]:
        before = snapshot(corpus / resolve(case, case.unchanged)) if case.unchanged else {}
        return runner(*(resolve(case, a) for a in case.args), cwd=corpus), before

    in_processes = [c for c in cases if c.id in MEMORY_CASES]
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip([c.id for c in in_processes], pool.map(one, in_processes)))
    return results | {c.id: one(c, run_here) for c in cases if c.id not in MEMORY_CASES}


# Cases whose peak memory a test compares: they run in processes of their own.
MEMORY_CASES = {"huge_image_20000x20000", "missing_image"}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_corpus_case(case, corpus, corpus_results):
    if case.needs_no_gpu and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result, before = corpus_results[case.id]
    assert "Traceback" not in result.stderr
    assert result.returncode == case.code, result.stderr
    if case.code == 0:
        for needle in case.needles:
            assert needle in result.stdout + result.stderr
        assert np.load(corpus / case.out / "p.npy").shape == (2, 32, 32, 3)
        return
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in case.needles:
        assert resolve(case, needle) in lines[0]
    assert not (corpus / case.out).exists()
    for path in case.absent:
        assert not (corpus / resolve(case, path)).exists(), path
    if case.unchanged:
        assert snapshot(corpus / resolve(case, case.unchanged)) == before


def test_huge_image_is_refused_before_it_is_decoded(corpus_results):
    """20000x20000 pixels would need 0.4 GB as grey and 1.2 GB more as RGB; the refusal needs neither."""
    if "huge_image_20000x20000" not in corpus_results:
        pytest.skip("the huge-image case was not selected")
    huge, baseline = corpus_results["huge_image_20000x20000"][0], corpus_results["missing_image"][0]
    assert huge.peak_mb - baseline.peak_mb < 200, (huge.peak_mb, baseline.peak_mb)


def test_the_corpus_has_at_least_30_error_cases():
    assert len([c for c in CASES if c.code != 0]) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


# --- --overwrite, kill and resume ------------------------------------------------------------------------------------

STEPS = 100


def prune_args(teacher: Path, out: Path, *extra: str) -> list[str]:
    return ["prune", teacher, "--image", "coffee", "--steps", str(STEPS), "--batch-size", "8", "--checkpoint-every",
            "10", "--eval-every", "1000", "--holdout-size", "64", "--seed", "3", "--device", "cpu", "--out", out,
            *extra]


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_teacher) -> Path:
    """The uninterrupted reference run, written with --overwrite over an earlier run's files and one of the user's."""
    out = tmp_path_factory.mktemp("straight")
    for name in ("report.json", "pruned.pt", "model.pt2", ".work/heal-1/checkpoint.pt"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("from an earlier run")
    (out / "my-notes.txt").write_text("mine")
    result = run(*prune_args(tiny_teacher, out, "--overwrite"))
    assert result.returncode == 0, result.stderr
    return out


def test_overwrite_replaces_the_earlier_run_and_keeps_the_users_files(straight):
    assert (straight / "my-notes.txt").read_text() == "mine"
    assert not (straight / "pruned.pt").exists() and not (straight / "model.pt2").exists()
    assert not (straight / ".work").exists()
    assert '"heal_steps": 100' in (straight / "report.json").read_text()
    assert sorted(p.name for p in straight.iterdir()) == ["healing.png", "model.onnx", "model.pt", "my-notes.txt",
                                                         "patches.png", "report.json", "report.md"]


def test_overwrite_never_leaves_an_earlier_runs_checkpoints_to_resume(tmp_path):
    (tmp_path / ".work" / "iteration-1.pt").parent.mkdir(parents=True)
    (tmp_path / ".work" / "iteration-1.pt").write_text("pruned by an earlier run with other options")
    prepare_out_dir(tmp_path, overwrite=True)
    assert not (tmp_path / ".work").exists()


def start_and_wait_for_checkpoint(args: list, checkpoint: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "compress1img", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.monotonic() + 300
    while not checkpoint.exists():  # written by rename: once it is there it is complete
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    return proc


def saved_step(checkpoint: Path) -> int:
    return torch.load(checkpoint, map_location="cpu", weights_only=True)["step"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_model(a).module.state_dict(), load_model(b).module.state_dict()
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def test_sigkill_mid_healing_then_resume_gives_the_uninterrupted_weights(tmp_path, tiny_teacher, straight):
    out = tmp_path / "killed"
    checkpoint = out / ".work" / "heal-1" / "checkpoint.pt"
    proc = start_and_wait_for_checkpoint(prune_args(tiny_teacher, out), checkpoint)
    proc.kill()  # SIGKILL: no handler runs, nothing is flushed
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    step = saved_step(checkpoint)
    assert 0 < step < STEPS  # it died mid-healing ...
    assert not (out / "model.pt").exists() and not (out / "report.json").exists()  # ... before any output

    resumed = run(*prune_args(tiny_teacher, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert f" {step}/{STEPS} " in resumed.stderr  # the progress bar starts at the checkpoint, not at 0
    assert not re.search(rf"\b0/{STEPS}\b", resumed.stderr)
    assert_same_weights(out / "model.pt", straight / "model.pt")
    assert not (out / ".work").exists()


def test_sigint_saves_a_checkpoint_and_says_how_to_resume(tmp_path, tiny_teacher, straight):
    out = tmp_path / "interrupted"
    checkpoint = out / ".work" / "heal-1" / "checkpoint.pt"
    proc = start_and_wait_for_checkpoint(prune_args(tiny_teacher, out), checkpoint)
    proc.send_signal(signal.SIGINT)  # Ctrl-C
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr
    step = saved_step(checkpoint)
    assert 0 < step < STEPS
    assert stderr.strip().splitlines()[-1] == (f"interrupted: stopped after step {step} of {STEPS}; checkpoint saved in "
                                               f"{checkpoint}, continue with --resume")
    assert "Traceback" not in stderr and not (out / "model.pt").exists()

    resumed = run(*prune_args(tiny_teacher, out, "--resume"))
    assert resumed.returncode == 0, resumed.stderr
    assert_same_weights(out / "model.pt", straight / "model.pt")


# --- resources and numerical checks, in-process -----------------------------------------------------------------------

@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 70368744177664 bytes. Error code 12 (Cannot allocate memory)"),
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
], ids=["cpu", "cuda"])
def test_out_of_memory_suggests_a_smaller_batch_and_keeps_the_checkpoint(tmp_path, tiny_teacher, monkeypatch, cli,
                                                                        error):
    import compress1img.losses as losses

    real_loss, calls = losses.distillation_loss, []

    def loss_that_runs_out_of_memory_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise error
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(losses, "distillation_loss", loss_that_runs_out_of_memory_at_step_3)
    out = tmp_path / "run"
    code, lines = cli("distill", "--teacher", tiny_teacher, "--student", "cifar_resnet20", "--image", "coffee",
                      "--steps", "5", "--batch-size", "64", "--holdout-size", "8", "--checkpoint-every", "2",
                      "--device", "cpu", "--match", "logits", "--out", out)  # logits: the loss replaced here
    assert code == 1
    assert lines[-1] == (f"error: out of memory with --batch-size 64; the last good checkpoint (step 2) is kept in "
                         f"{out / 'checkpoint.pt'}; try a smaller --batch-size (e.g. 32)")
    assert saved_step(out / "checkpoint.pt") == 2 and not (out / "model.pt").exists()


def test_other_runtime_errors_are_not_taken_for_out_of_memory(tmp_path, tiny_teacher, monkeypatch, cli):
    import compress1img.losses as losses

    def broken_loss(*args, **kwargs):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(losses, "distillation_loss", broken_loss)
    code, lines = cli("distill", "--teacher", tiny_teacher, "--student", "cifar_resnet20", "--image", "coffee",
                      "--steps", "2", "--batch-size", "4", "--holdout-size", "8", "--device", "cpu", "--match", "logits")
    assert code == 1 and "--batch-size" not in lines[-1] and "mat1 and mat2" in lines[-1]


def test_onnx_that_differs_from_pytorch_is_an_error_and_is_not_written(tmp_path):
    torch.manual_seed(0)
    model, other = nn.Sequential(nn.Flatten(), nn.Linear(48, 5)), nn.Sequential(nn.Flatten(), nn.Linear(48, 5))
    path = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"differs from PyTorch by .* \(allowed 0.001\); .*model.onnx was not "
                                          r"written"):
        export_onnx(model, path, input_size=(3, 4, 4), mean=(0.5,) * 3, std=(0.2,) * 3,
                    onnx_bytes=onnx_model_bytes(other, (3, 4, 4)))
    assert list(tmp_path.iterdir()) == []
    export_onnx(model, path, input_size=(3, 4, 4), mean=(0.5,) * 3, std=(0.2,) * 3)
    assert path.is_file()
