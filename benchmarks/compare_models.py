"""Two saved models scored image by image on the CIFAR-10 test file: top-1 of each, agreement, exact McNemar.

    python benchmarks/compare_models.py A/model.pt B/model.pt [--teacher WEIGHTS --arch ARCH]

A and B are anything `load_model` reads (a compress1img model.pt, a weights file with --arch-a/--arch-b); both
are scored on all 10,000 images of cifar10_test_jpeg75.npz. With --teacher, each model's agreement with it is
printed too. One JSON line: the counts of images right only with A and only with B, and the exact two-sided
McNemar p-value on them (a paired comparison: a difference of 1 pt can be far beyond the noise, or within it).
"""
import argparse
import json
import sys
from pathlib import Path

from compress1img import load_eval_data, load_model
from compress1img.evaluate import predict

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paths import CIFAR_TEST  # noqa: E402
from real_image_ceiling import exact_sign_test  # noqa: E402


def answers(path: str, arch: str | None, images):
    model = load_model(path, arch)
    return predict(model.module, images, model.mean, model.std).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--arch-a", help="architecture of A when it is a bare weights file")
    parser.add_argument("--arch-b", help="architecture of B when it is a bare weights file")
    parser.add_argument("--teacher", help="a model whose agreement with each is printed (weights file + --arch)")
    parser.add_argument("--arch", help="the teacher's architecture")
    args = parser.parse_args()
    data = load_eval_data(str(CIFAR_TEST))
    a, b = answers(args.a, args.arch_a, data.images), answers(args.b, args.arch_b, data.images)
    right_a, right_b = a == data.labels, b == data.labels
    result = {"a": args.a, "b": args.b, "top1_a": 100 * right_a.float().mean().item(),
              "top1_b": 100 * right_b.float().mean().item(), "agreement": 100 * (a == b).float().mean().item(),
              **exact_sign_test(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))}
    if args.teacher:
        teacher = answers(args.teacher, args.arch, data.images)
        result.update({"teacher_top1": 100 * (teacher == data.labels).float().mean().item(),
                       "agreement_a": 100 * (a == teacher).float().mean().item(),
                       "agreement_b": 100 * (b == teacher).float().mean().item()})
    print(json.dumps(result))


if __name__ == "__main__":
    main()
