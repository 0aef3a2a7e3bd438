"""Train a CIFAR ResNet-20 from the bundled ResNet-20 teacher on patches of one image.

    python examples/distill_api.py [--steps 200]
"""
import argparse

from compress1img import DistillConfig, bundled_teacher, distill, load_model

parser = argparse.ArgumentParser()
parser.add_argument("--steps", type=int, default=200)
parser.add_argument("--out", default="runs/example-distill")
args = parser.parse_args()

teacher = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56")
report = distill(teacher, "cifar_resnet20", image="china", out=args.out, overwrite=True,
                 config=DistillConfig(steps=args.steps, batch_size=128, eval_every=50))
print(f"held-out agreement with the teacher: {report['holdout_agreement']:.1f}%")

student = load_model(f"{args.out}/model.pt")  # reloads without pickled code
print(student.source, student.input_size, student.num_classes)
