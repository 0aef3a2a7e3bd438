# The one place for the data paths of the shell benchmarks: the twin of benchmarks/paths.py.
# Sourced by prune_r56.sh, quantize_r56.sh and distill_budgets.sh; `source benchmarks/paths.sh` in an
# interactive bash sets the same variables ($DATA, $R56, ...) for the commands in the scripts' docstrings.
# DATA: $DATA, else $COMPRESS1IMG_DATA, else ../shared/data next to the repository root (found from this
# file's location, so it does not depend on the working directory). Exported as COMPRESS1IMG_DATA too, so
# that Python benchmarks started from here read the same folder. See DATA/MANIFEST.md for the files.
DATA=${DATA:-${COMPRESS1IMG_DATA:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/shared/data}}
export COMPRESS1IMG_DATA=$DATA
CIFAR_TEST=$DATA/cifar10_test_jpeg75.npz
R20=$DATA/weights/cifar10_resnet20_akamaster.th
R56=$DATA/weights/cifar10_resnet56_akamaster.th
ANIMALS=$DATA/images/animals.jpg
CITY=$DATA/images/city.jpg
BRIDGE=$DATA/images/bridge.png
