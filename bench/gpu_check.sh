#!/usr/bin/env bash
# Runs the library's tests and speed benchmarks on a GPU machine, on the JAX backend.
# Such machines carry JAX but not TensorFlow; when Keras is missing, its wheels are taken from
# .whl/ (see README, "GPU"). Results go to $OUT (or bench/results/gpu).
#   bench/gpu_check.sh [pytest paths...] [-- bench names...]
# Defaults: all of tests/spectral, then inference_speed and pruning_speed.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-bench/results/gpu}"
mkdir -p "$out"
tests=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do tests+=("$1"); shift; done
[ $# -gt 0 ] && shift
benches=("$@")
[ ${#tests[@]} -gt 0 ] || tests=(tests/spectral)
[ ${#benches[@]} -gt 0 ] || benches=(inference_speed pruning_speed)

if ! python3 -c "import keras" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/device.txt"
python3 -c "import jax, keras; print('jax', jax.__version__, jax.devices(), 'keras', keras.__version__)" \
    | tee -a "$out/device.txt"
# Equivalence tests compare pruned and masked models to 1e-5; the GPU's default float32 matmul
# (TF32) rounds to about 1e-3, so the tests ask for full float32 precision.
JAX_DEFAULT_MATMUL_PRECISION=highest python3 -m pytest -q -p no:cacheprovider "${tests[@]}" 2>&1 \
    | tee "$out/spectral_tests.log" | tail -n 15
for name in "${benches[@]}"; do
    python3 "bench/${name}.py" --out-dir "$out" 2>&1 | grep -v "^I0000" | tail -n 12
done
