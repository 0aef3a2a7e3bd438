"""What a command prints when it is done: the few lines a user reads (report.md has the rest)."""
from __future__ import annotations

from pathlib import Path

from .. import distributed


def print_compress_summary(report: dict, out: Path | None) -> None:
    if not distributed.is_main():  # rank 0 speaks for the run
        return
    lines = [f"{report['command']}: {report['model']}"] + _source(report)
    if "weight_sparsity" in report:  # unstructured: nothing is removed, weights are zeroed
        lines.append(f"  {100 * report['weight_sparsity']:.1f}% of the conv/linear weights zeroed "
                     f"({report['requested_sparsity'] * 100:.0f}% asked); parameter and MAC counts unchanged")
    elif "params_after" in report:
        lines.append(f"  params {report['params_before']:,} -> {report['params_after']:,} "
                     f"({100 * report['params_removed']:.1f}% removed, {report['requested_sparsity'] * 100:.0f}% "
                     f"asked), MACs {report['macs_before']:,} -> {report['macs_after']:,} "
                     f"({100 * report['macs_removed']:.1f}% removed); healed {report['heal_steps']} steps")
    if report.get("dropped_blocks"):
        lines.append(f"  blocks dropped (replaced by identities): {', '.join(report['dropped_blocks'])}")
    if "quantization" in report:
        q = report["quantization"]
        how = f"{q['qat_steps']} steps of quantization-aware training" if q["method"] == "qat" else \
            f"calibrated on {q['calibration_patches']} patches (ptq)"
        lines.append(f"  int8, {how}; ONNX Runtime runs {q['int8_convs']} convs and {q['int8_adds']} adds in int8, "
                     f"{q['float_convs']} convs in float")
    lines.append(f"  agreement with the original on {report['holdout_patches']:,} held-out patches (never trained on): "
                 f"{report['holdout_agreement']:.1f}%")
    if "final_top1" in report:
        lines.append(f"  top-1 on {report['eval_data']}: {report['final_top1']:.2f}%, original "
                     f"{report['teacher_top1']:.2f}% ({report['top1_change']:+.2f} pt)")
    speedups = [(key.removeprefix("speedup_b"), value) for key, value in report.items() if key.startswith("speedup_b")]
    if speedups:
        lines.append("  ONNX Runtime speed-up vs the original: "
                     + ", ".join(f"{value:.2f}x at batch {batch}" for batch, value in speedups))
    if "speedup_note" in report:
        lines.append(f"  note: {report['speedup_note']}")
    if out is not None:
        files = sorted(p.name for p in Path(out).iterdir() if p.is_file())
        lines.append(f"  wrote {', '.join(files)} in {out}")
    print("\n".join(lines))


MATCHED = {"features": "last feature map (its classifier copied, frozen)", "logits": "softened outputs (KL)"}


def print_distill_summary(report: dict, out: Path | None) -> None:
    if not distributed.is_main():  # rank 0 speaks for the run
        return
    processes = report["processes"]
    batch = (f"{report['batch_size']} patches" if processes["world_size"] == 1 else
             f"{processes['global_batch']} patches ({processes['world_size']} processes x {report['batch_size']})")
    lines = [f"{report['command']}: {report['student']} from {report['teacher']}", *_source(report),
             f"  {report['steps']} steps x {batch} in {report['train_seconds']:.0f} s "
             f"({report['patches_per_second']:.0f} patches/s), learning the teacher's "
             f"{MATCHED.get(report.get('match'), 'outputs')}",
             f"  agreement with the teacher on {report['holdout_patches']:,} held-out patches (never trained on): "
             f"{report['holdout_agreement']:.1f}% (KL {report['holdout_kl']:.3f})"]
    if "student_top1" in report:
        lines.append(f"  top-1 on {report['eval_data']}: student {report['student_top1']:.2f}%, "
                     f"teacher {report['teacher_top1']:.2f}%")
    if out is not None:
        models = ", ".join(f"{out}/{name}" for name in ("model.pt", "model.pt2") if (Path(out) / name).exists())
        lines.append(f"  wrote {models}, {out}/model.onnx (ONNX Runtime max abs diff "
                     f"{report['onnx_max_abs_diff']:.1e}), {out}/report.md (with healing.png, patches.png), "
                     f"{out}/report.json")
    print("\n".join(lines))




def _source(report: dict) -> list[str]:
    """A line on the source images when there were several (one image is in report.md)."""
    if report.get("images_used", 1) <= 1:
        return []
    how = "used whole" if report["image_mode"] == "whole" else "cut into patches"
    return [f"  source: {report['images_used']} images, {how}"]
