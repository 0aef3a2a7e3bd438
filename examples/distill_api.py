"""Train a CIFAR ResNet-20 from the bundled ResNet-20 teacher on patches of one image.

    python examples/distill_api.py [--steps 200] [--out runs/example-distill]
"""
import argparse

from compress1img import DistillConfig, RunConfig, bundled_teacher, distill, load_model

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--steps", type=int, default=200, help="training steps")
parser.add_argument("--out", default="runs/example-distill", help="output folder")
args = parser.parse_args()

teacher = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56")
result = distill(teacher, "cifar_resnet20", "china", DistillConfig(steps=args.steps, batch_size=128),
                 run=RunConfig(out=args.out, overwrite=True, eval_every=max(args.steps // 4, 1)))
print(f"held-out agreement with the teacher: {result.report['holdout_agreement']:.1f}%")

student = load_model(f"{args.out}/model.pt")  # reloads without pickled code
print(student.source, student.input_size, student.num_classes)
