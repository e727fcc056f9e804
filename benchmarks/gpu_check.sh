#!/usr/bin/env bash
# On a fresh machine with an NVIDIA GPU, from the repository root:
#   bash benchmarks/gpu_check.sh [MNIST_DIR]
# installs the CUDA build of jax and mlrobust, runs the fast tests, trains
# the paper-size DenseNet-40 (tanh_mse) on MNIST for one epoch and prints
# train img/s, input-gradient img/s and the attack table of
# benchmarks/attacks.py. MNIST_DIR holds the four upstream MNIST files (for a
# machine without internet access); without it TFDS downloads MNIST.
# Meant to finish in under 10 minutes; put its output in BENCHMARKS.md with
# the card's name (printed first).
set -euo pipefail
cd "$(dirname "$0")/.."
MNIST_DIR=${1:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
pip install -q -U "jax[cuda12]" && pip install -q -e '.[test]'
python -c "import jax; print(jax.devices()); assert jax.default_backend() == 'gpu'"
# The fast subset: no notebooks, no subprocess launches, no slow grids.
timeout 300 pytest -q -x tests/test_heads.py tests/test_losses.py \
  tests/test_attacks.py tests/test_spectral.py tests/test_sharding.py || true
MANUAL=()
if [ -n "$MNIST_DIR" ]; then MANUAL=(--config.data.manual_dir="$MNIST_DIR"); fi
W=$(mktemp -d)/mnist_tanh_mse_paper
/usr/bin/time -f 'one epoch (DenseNet-40, wall): %e s' \
  python launch.py --config=configs/mnist.py:tanh_mse --workdir="$W" \
  --config.train.num_epochs=1 "${MANUAL[@]}" 2>&1 | grep -E 'img/s|test accuracy|wall' | tail -4
PYTHONPATH=. python benchmarks/train_throughput.py --dataset=mnist \
  --sizes=cpu,paper --presets=tanh_mse --repeats=2
PYTHONPATH=. python benchmarks/attacks.py
