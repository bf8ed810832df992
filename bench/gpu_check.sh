#!/usr/bin/env bash
# Runs the library's tests and speed benchmarks on a GPU machine, on the JAX backend.
# Such machines carry JAX but not TensorFlow; when Keras is missing, its wheels are taken from
# .whl/ (see README, "GPU"). Results go to $OUT (or bench/results/gpu).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
if ! python3 -c "import keras" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
    | tee -a "$out/device.txt"
python3 -m pytest -q -p no:cacheprovider tests/spectral 2>&1 | tee "$out/spectral_tests.log"
python3 bench/inference_speed.py --out-dir "$out" 2>&1 | grep -v "^I0000" | tail -n 30
python3 bench/pruning_speed.py --out-dir "$out" 2>&1 | grep -v "^I0000" | tail -n 30
