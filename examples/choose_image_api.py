"""Which of my images should the model be compressed with? Rank them for the bundled teacher, then prune with the best.

    python examples/choose_image_api.py [IMAGE ...]    (default: the bundled images and noise)
"""
import argparse

from compress1img import DistillConfig, PruneConfig, bundled_teacher, prune, score_images

parser = argparse.ArgumentParser()
parser.add_argument("images", nargs="*", default=["china", "astronaut", "coffee", "chelsea", "hubble", "noise"])
parser.add_argument("--steps", type=int, default=100)
args = parser.parse_args()

teacher = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56")
ranking = score_images(args.images, teacher, preview="runs/example-look.png")
for row in ranking:
    print(f"{row['rank']}. {row['image']:<12} score {row['score']:.3f} (classes seen {100 * row['classes']:.0f}%, "
          f"evenness {row['evenness']:.2f}, feature diversity {row['diversity']:.2f})")

report = prune(teacher, ranking[0]["image"], config=PruneConfig(sparsity=0.5), heal=DistillConfig(steps=args.steps),
               measure_latency=False)
print(f"pruned on {ranking[0]['image']}: {report['holdout_agreement']:.1f}% agreement with the original")
