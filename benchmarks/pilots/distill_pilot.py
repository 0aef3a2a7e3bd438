"""From-scratch distillation ResNet-56 -> ResNet-20 on one image, the KL of the logits against feature mimicry.

    python benchmarks/pilots/distill_pilot.py STEPS [--image IMAGE] [--mimic KL_WEIGHT] [--name NAME] [NAME=VALUE ...]
    python benchmarks/pilots/distill_pilot.py --compare A B       # paired test of two runs' predictions
    python benchmarks/pilots/distill_pilot.py --compare A B --against-teacher   # ... of agreement with the teacher

The settings are the packaged recipe distill-cifar-r56-r20's (NAME=VALUE changes a DistillConfig or RunConfig
field), on Animals' patches unless `--image` names other images (anything `distill --image` takes, e.g. photos);
scored on all 10,000 images of cifar10_test_jpeg75.npz. `--image N` (a number) distils on N unlabeled images of
the file's even-indexed half used whole (as benchmarks/real_image_ceiling.py's N) and scores the odd-indexed half
only. The mixing is `distill`'s default, `mix=auto` (for patches the recipe's one CutMix box at Beta(0.25, 0.25);
for images used whole CutMix per image at Beta(1, 1)): `mix=cutmix mix_alpha=0.25` gives images the one box.
Without options the student learns what `distill` teaches by default: the ResNet-20 ends in the same 64 x 8 x 8
map as the ResNet-56 (`layer3`'s output) and the same classifier shape, so it gets a copy of the teacher's
classifier, frozen, and learns to reproduce the teacher's last feature map (the mean squared error over the
teacher's mean energy, as `--match features` heals a pruned copy); `match=logits` is the paper's KL of the
softened outputs. `--mimic W` is the same feature mimicry put in through the loop's `loss_fn` and `hooks` (the
classifier copied when training starts), plus W x the default KL. Each run prints one JSON line and keeps its
predictions in benchmarks/results/distill-pilot/NAME.npy for `--compare`.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from compress1img import DistillConfig, RunConfig, distill, load_eval_data
from compress1img.augment import mixing_for_source
from compress1img.evaluate import predict
from compress1img.losses import kl_loss
from compress1img.mimicry import FeatureMimicry
from compress1img.models import load_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py
from paths import ANIMALS, CIFAR_TEST, R56  # noqa: E402
from overrides import parse, with_overrides  # noqa: E402
from real_image_ceiling import exact_sign_test, halves, odd_half_file, source_images  # noqa: E402

RESULTS = Path("benchmarks/results/distill-pilot")


class TeacherHeadMimicry(FeatureMimicry):
    """Feature mimicry for a new student whose last feature map and classifier have the teacher's shapes: the
    teacher's classifier is copied into the student and frozen when training starts."""

    def __init__(self, heal: DistillConfig, kl_weight: float, layer: str = "layer3", head: str = "linear"):
        super().__init__(layer, head)
        self.kl, self.kl_weight = kl_loss(heal), kl_weight

    def on_start(self, teacher, student):
        teacher_head, student_head = (dict(m.named_modules())[self.classifier] for m in (teacher, student))
        student_head.load_state_dict(teacher_head.state_dict())
        self.freeze_classifier(student)  # AdamW skips what gets no gradient
        super().on_start(teacher, student)

    def loss(self, student_logits, teacher_logits):
        mimic = super().loss(student_logits, teacher_logits)
        return mimic + self.kl_weight * self.kl(student_logits, teacher_logits) if self.kl_weight else mimic


def compare(a: str, b: str, against_teacher: bool = False) -> None:
    pa, pb = (np.load(RESULTS / f"{name}.npy") for name in (a, b))
    data = np.load(CIFAR_TEST)
    scored = halves()[1] if len(pa) == len(data["labels"]) // 2 else slice(None)  # runs scored on the odd half
    labels = data["labels"][scored]
    if against_teacher:  # the teacher's answers in place of the labels: which run copies it more faithfully
        teacher = load_model(R56, "cifar_resnet56")
        labels = predict(teacher.module, torch.from_numpy(data["images"][scored]), teacher.mean,
                         teacher.std).argmax(1).numpy()
    right_a, right_b = pa == labels, pb == labels
    print(json.dumps({"a": a, "b": b, "top1_a": 100 * right_a.mean(), "top1_b": 100 * right_b.mean(),
                      **exact_sign_test(int((right_a & ~right_b).sum()), int((~right_a & right_b).sum()))}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("steps", nargs="?", type=int, help="training steps")
    parser.add_argument("overrides", nargs="*", metavar="NAME=VALUE", help="settings to change")
    parser.add_argument("--image", default=str(ANIMALS), help="source image(s) (default: Animals)")
    parser.add_argument("--mimic", type=float, metavar="KL_WEIGHT", help="feature mimicry plus KL_WEIGHT x the KL")
    parser.add_argument("--name", help="name of the prediction file (default: from the steps and options)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two earlier runs by name")
    parser.add_argument("--against-teacher", action="store_true",
                        help="with --compare: test agreement with the teacher (its answers in place of the labels)")
    args = parser.parse_intermixed_args()  # NAME=VALUE settings may follow the options
    if args.compare:
        return compare(*args.compare, args.against_teacher)
    if args.steps is None:
        parser.error("give STEPS or --compare A B")
    options = parse(args.overrides)
    config = with_overrides(DistillConfig(steps=args.steps, batch_size=128, lr=0.003, weight_decay=0.0, warmup=0.03,
                                          temperature=8.0), options)
    run = with_overrides(RunConfig(eval_every=max(args.steps // 4, 1), progress=False), options)
    if options:
        parser.error(f"unknown settings: {', '.join(options)}")
    image, eval_data = source_images(args.image), str(odd_half_file() if args.image.isdigit() else CIFAR_TEST)
    name = args.name or f"r20-{args.steps}-{config.match}" + (f"-{args.image}" if args.image.isdigit() else "") + (
        f"-mimic{args.mimic:g}" if args.mimic is not None else "") + (f"-seed{run.seed}" if run.seed else "")
    hooks, loss_fn = [], None
    if args.mimic is not None:
        mimic = TeacherHeadMimicry(config, args.mimic)
        hooks, loss_fn = [mimic], mimic.loss
    started = time.time()
    result = distill(str(R56), "cifar_resnet20", image, config, run=run, eval_data=eval_data,
                     arch="cifar_resnet56", loss_fn=loss_fn, hooks=hooks)
    labelled = load_eval_data(eval_data)
    predictions = predict(result.model.module, labelled.images, result.model.mean, result.model.std).argmax(1).numpy()
    RESULTS.mkdir(parents=True, exist_ok=True)
    np.save(RESULTS / f"{name}.npy", predictions)
    report = result.report
    mixing = mixing_for_source(config, report["image_mode"])  # what "auto" became for these images
    print(json.dumps({"name": name, "image": args.image, "steps": args.steps, "mimic": args.mimic,
                      "options": args.overrides,
                      "match": report.get("match"), "image_mode": report.get("image_mode"),
                      "images_used": report.get("images_used"), "eval_data": eval_data,
                      **{key: getattr(mixing, key) for key in ("mix", "mix_alpha")}, "top1": report.get("student_top1"),
                      "check_top1": 100 * float((predictions == labelled.labels.numpy()).mean()),
                      "test_agreement": report.get("test_agreement"), "train_seconds": report.get("train_seconds"),
                      "minutes": (time.time() - started) / 60}))


if __name__ == "__main__":
    main()
