"""Print markdown rows for docs/benchmarks.md from the report.json files of benchmark runs.

    python benchmarks/summarize.py benchmarks/results/distill-* benchmarks/results/prune-*
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

# Step time of the 2-core machine for ResNet-56 teacher -> ResNet-20 student at batch 128 is taken
# from throughput.json (an uncontended measurement), so CPU-hours do not depend on what else ran.


def distill_rows(reports: list[dict], step_seconds: float | None) -> list[str]:
    rows = ["| steps x batch | patches seen | CPU minutes (at the measured step time) | held-out agreement | "
            "student top-1 | teacher top-1 |", "|---|---|---|---|---|---|"]
    for r in sorted(reports, key=lambda r: r["steps"]):
        minutes = f"{r['steps'] * step_seconds / 60:.0f}" if step_seconds else "?"
        rows.append(f"| {r['steps']} x {r['batch_size']} | {r['patches_seen']:,} | {minutes} | "
                    f"{r['holdout_agreement']:.1f}% | {r['student_top1']:.2f}% | {r['teacher_top1']:.2f}% |")
    return rows


def curve_rows(report: dict) -> list[str]:
    rows = ["| step | held-out agreement | held-out KL | top-1 (1,000-image slice) |", "|---|---|---|---|"]
    for h in report["history"]:
        rows.append(f"| {h['step']} | {h['holdout_agreement']:.1f}% | {h['holdout_kl']:.3f} | "
                    f"{h.get('accuracy', float('nan')):.1f}% |")
    return rows


def prune_rows(reports: list[dict]) -> list[str]:
    rows = ["| run | params removed | MACs removed | heal steps (minutes) | top-1 right after the cut | top-1 healed | "
            "teacher top-1 | change | ORT speed-up b1 / b32 |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports:
        cut = r["per_iteration"][0].get("top1_after_cut", float("nan"))
        minutes = sum(i.get("heal_seconds", 0.0) for i in r["per_iteration"]) / 60
        speed = f"{r['speedup_b1']:.2f}x / {r['speedup_b32']:.2f}x" if "speedup_b1" in r else "-"
        removed = (f"{100 * r['weight_sparsity']:.1f}% of weights zeroed" if "weight_sparsity" in r
                   else f"{100 * r['params_removed']:.1f}%")
        rows.append(f"| {name} | {removed} | {100 * r['macs_removed']:.1f}% | "
                    f"{r['heal_steps']} ({minutes:.0f}) | {cut:.2f}% | {r['pruned_top1']:.2f}% | {r['teacher_top1']:.2f}% | "
                    f"{r['top1_change']:+.2f} pt | {speed} |")
    return rows


def quantize_rows(reports: list[tuple[str, dict]]) -> list[str]:
    rows = ["| run | method | QAT steps (minutes) | int8 top-1 | teacher top-1 | change | test agreement with teacher | "
            "convs in int8 / float | ORT speed-up vs the fp32 model given b1 / b32 | ONNX size vs fp32 |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in reports:
        q = r["quantization"]
        steps = f"{q['qat_steps']} ({q['qat_seconds'] / 60:.1f})" if q["method"] == "qat" else "-"
        rows.append(f"| {name} | {q['method']} | {steps} | {r['final_top1']:.2f}% | {r['teacher_top1']:.2f}% | "
                    f"{r['top1_change']:+.2f} pt | {r['test_agreement']:.2f}% | {q['int8_convs']} / {q['float_convs']} | "
                    f"{r['speedup_b1']:.2f}x / {r['speedup_b32']:.2f}x | "
                    f"{r['dense_onnx_bytes'] / r['onnx_bytes']:.2f}x smaller |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", type=Path, help="run folders (each with a report.json)")
    paths = parser.parse_args().runs
    throughput = Path("benchmarks/results/throughput.json")
    step_seconds = None
    if throughput.exists():
        text = throughput.read_text()
        step_seconds = json.loads(text[text.index("{"):])["step_s_on_the_fly"]
    distills, prunes, quantizes = [], [], []
    for path in paths:
        report_file = path / "report.json"
        if not report_file.exists():
            continue
        report = json.loads(report_file.read_text())
        if report["command"] == "distill":
            distills.append(report)
        elif "quantization" in report:
            quantizes.append((path.name, report))
        else:
            prunes.append((path.name, report))
    if distills:
        print("\n".join(distill_rows(distills, step_seconds)) + "\n")
        print("\n".join(curve_rows(max(distills, key=lambda r: r["steps"]))) + "\n")
    if prunes:
        print("\n".join(prune_rows(prunes)) + "\n")
    if quantizes:
        print("\n".join(quantize_rows(quantizes)))


if __name__ == "__main__":
    main()
