#!/usr/bin/env bash
# Compress a trained model through the spectral registry, and promote it only if it kept its
# accuracy: the shell steps both example pipelines (GitHub Actions, GitLab CI) run.
#
#   deploy/ci/compress.sh MODEL.keras DATA.npz [spectral jobs submit options...]
#
# 1. pushes MODEL.keras as the next version of $MODEL_NAME;
# 2. prunes exactly that version on DATA.npz, with the promotion gate: the worker moves
#    $PROMOTE_ALIAS to the pruned version only if the metric dropped by at most
#    $MAX_DROP_PERCENT (points, for accuracy); default options: a metric search with a 2 %
#    budget (--method metric --max-delta-percent 2), or the options given after DATA.npz;
# 3. saves the job, the report and its PNG under $OUT_DIR for the pipeline's artifacts.
#
# Its exit code is `spectral`'s: 0 promoted; 1 the gate refused (the alias is unchanged: fail
# the deploy); 2 bad input or a 4xx; 3 the job failed, was cancelled or timed out; 4 the server
# is unreachable or answered 5xx. Needs only `pip install "spectral-pruning[client]"`.
#
# Environment: SPECTRAL_URL, SPECTRAL_API_TOKEN (read by `spectral`), MODEL_NAME (digits),
# PROMOTE_ALIAS (production), MAX_DROP_PERCENT (1), JOB_TIMEOUT_S (1800), OUT_DIR (spectral-out).
set -euo pipefail

if [ "$#" -lt 2 ]; then
    echo "usage: $0 MODEL.keras DATA.npz [spectral jobs submit options...]" >&2
    exit 2
fi
model_file=$1
data_file=$2
shift 2
if [ "$#" -eq 0 ]; then
    set -- --method metric --max-delta-percent 2
fi
name=${MODEL_NAME:-digits}
alias=${PROMOTE_ALIAS:-production}
out=${OUT_DIR:-spectral-out}
mkdir -p "$out"

field() { # field FILE KEY...: one value of a JSON document `spectral --json` wrote
    python -c 'import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2:]:
    value = (value or {}).get(key)
print("" if value is None else value)' "$@"
}

spectral push "$model_file" --name "$name" --json >"$out/pushed.json"
version=$(field "$out/pushed.json" version)
echo "pushed $model_file as $name version $version" >&2

status=0
spectral jobs submit "$name" --version "$version" --data "$data_file" "$@" \
    --promote "$alias" --max-drop-percent "${MAX_DROP_PERCENT:-1}" \
    --wait --timeout "${JOB_TIMEOUT_S:-1800}" --json >"$out/job.json" || status=$?

# The report exists whenever the job made a version: when the gate refused (exit 1) too.
pruned=$(field "$out/job.json" result version)
if [ -n "$pruned" ]; then
    spectral report "$name" "$pruned" --png "$out/report.png" --json >"$out/report.json"
    spectral report "$name" "$pruned" >&2
fi
spectral aliases history "$name" "$alias" --limit 5 >&2 || true
exit "$status"
