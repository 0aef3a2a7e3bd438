"""Pilot: average the weights of several healings of the same cut (a "model soup", Wortsman et al., ICML 2022).

    python benchmarks/pilots/soup.py NAME NAME [NAME ...] [--bn average|patches] [--source animals] [--name SOUP]

Each NAME is a run of `real_image_ceiling.py ... --save-model --name NAME` (benchmarks/results/ceiling/NAME.pt):
the same cut (it does not depend on the seed), healed with other seeds, so other patches, batches and
augmentation. The soup is the mean of their parameters. BatchNorm's running statistics are either averaged with
them (`--bn average`) or measured again on the soup over healing patches (`--bn patches`, as SWA does). Scored on
the odd half of the test file like the runs themselves; the mean of the runs' logits (an ensemble, which costs
K forward passes) is printed beside it as the most averaging could give. Compare with `real_image_ceiling.py
--compare A SOUP`.
"""
import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from compress1img import load_eval_data
from compress1img.evaluate import normalize, predict, top1
from compress1img.models import load_model
from compress1img.sources import open_source

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: for paths.py and the ceiling script
from paths import ANIMALS, R56  # noqa: E402
from real_image_ceiling import RESULTS, odd_half_file  # noqa: E402


def soup(modules: list[torch.nn.Module]) -> torch.nn.Module:
    """The first module with every floating-point entry of its state dict replaced by the mean over all."""
    states = [m.state_dict() for m in modules]
    mean = {key: torch.stack([s[key].float() for s in states]).mean(0).to(value.dtype)
            if value.is_floating_point() else value for key, value in states[0].items()}
    modules[0].load_state_dict(mean)
    return modules[0]


@torch.no_grad()
def measure_batchnorm(model: torch.nn.Module, source, mean, std, batches: int, batch_size: int) -> None:
    """Running statistics measured again as the plain average over `batches` batches of patches."""
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    model.train()
    for index in range(batches):
        model(normalize(source.batch(batch_size, 10_000_000 + index), mean, std))
    model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="names of runs saved with --save-model")
    parser.add_argument("--bn", choices=("average", "patches"), default="average")
    parser.add_argument("--source", default="animals", help="the healing source, for --bn patches")
    parser.add_argument("--bn-batches", type=int, default=50)
    parser.add_argument("--name", help="name of the soup's prediction file")
    args = parser.parse_args()
    if len(args.runs) < 2:
        parser.error("a soup needs two runs or more")
    teacher = load_model(R56, "cifar_resnet56")
    labelled = load_eval_data(odd_half_file())
    modules = [torch.load(RESULTS / f"{name}.pt", weights_only=False) for name in args.runs]
    model = soup(modules)
    if args.bn == "patches":
        source = open_source(str(ANIMALS) if args.source == "animals" else args.source, 32, 0, 1).train
        measure_batchnorm(model, source, teacher.mean, teacher.std, args.bn_batches, 128)
    logits = predict(model, labelled.images, teacher.mean, teacher.std)
    name = args.name or "soup-" + "+".join(args.runs) + f"-bn{args.bn}"
    np.save(RESULTS / f"{name}.npy", logits.argmax(1).numpy())
    ensemble = torch.from_numpy(np.mean([np.load(RESULTS / f"{n}-logits.npy") for n in args.runs], axis=0))
    teacher_logits = predict(teacher.module, labelled.images, teacher.mean, teacher.std)
    print(json.dumps({"name": name, "runs": args.runs, "bn": args.bn,
                      "top1_each": [top1(torch.from_numpy(np.load(RESULTS / f"{n}-logits.npy")), labelled.labels)
                                    for n in args.runs],
                      "top1_soup": top1(logits, labelled.labels),
                      "top1_ensemble": top1(ensemble, labelled.labels),
                      "teacher_top1": top1(teacher_logits, labelled.labels),
                      "agreement_soup": top1(logits, teacher_logits.argmax(1))}))


if __name__ == "__main__":
    main()
