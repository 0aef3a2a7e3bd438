"""How long `score-image` takes per image on this machine, for a 32 px and a 224 px teacher.

The real CIFAR ResNet-56 (2,048 patches of 32 px) and a randomly initialised torchvision ResNet-50
(512 patches of 224 px; time does not depend on the weights), three images each.

    python benchmarks/score_image_time.py
"""
import argparse
import time

from compress1img import create_model_from_name, load_model, score_images
from compress1img.models import LoadedModel
from paths import R56


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    images = ["china", "coffee", "hubble"]
    r56 = load_model(R56, "cifar_resnet56")
    module, cfg = create_model_from_name("tv:resnet50", pretrained=False)
    r50 = LoadedModel(module.eval(), cfg["arch"], cfg["input_size"], cfg["mean"], cfg["std"], cfg["num_classes"])
    for name, teacher in (("cifar_resnet56, 32 px", r56), ("tv:resnet50 (random weights), 224 px", r50)):
        started = time.perf_counter()
        ranking = score_images(images, teacher, device="cpu", progress=False)
        seconds = (time.perf_counter() - started) / len(images)
        print(f"{name}: {ranking[0]['patches']} patches per image, {seconds:.1f} s per image")


if __name__ == "__main__":
    main()
