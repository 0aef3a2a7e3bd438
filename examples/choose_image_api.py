"""Which of my images should the model be compressed with? Rank them for the bundled teacher, then prune with the best.

    python examples/choose_image_api.py [IMAGE ...] [--steps 100] [--patches N] [--preview FILE]
    (default images: the bundled ones and noise)
"""
import argparse

from compress1img import DistillConfig, PruneConfig, RunConfig, bundled_teacher, prune, score_images

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("images", nargs="*", default=["china", "astronaut", "coffee", "chelsea", "hubble", "noise"])
parser.add_argument("--steps", type=int, default=100, help="healing steps with the best image")
parser.add_argument("--patches", type=int, default=None, help="patches per image for the score (default: 2048)")
parser.add_argument("--preview", default="runs/example-look.png", help="PNG grid of each image's patches")
args = parser.parse_args()

teacher = bundled_teacher()  # or load_model("weights.th", arch="cifar_resnet56")
ranking = score_images(args.images, teacher, patches=args.patches, preview=args.preview)
for row in ranking:
    print(f"{row['rank']}. {row['image']:<12} score {row['score']:.3f} (classes seen {100 * row['classes']:.0f}%, "
          f"evenness {row['evenness']:.2f}, feature diversity {row['diversity']:.2f})")

result = prune(teacher, ranking[0]["image"], PruneConfig(sparsity=0.5), heal=DistillConfig(steps=args.steps),
               run=RunConfig(holdout_size=256), measure_latency=False)
print(f"pruned on {ranking[0]['image']}: {result.report['holdout_agreement']:.1f}% agreement with the original")
