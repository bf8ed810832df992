"""Benchmark: wall time of metric-based pruning, ours against the original algorithm.

The original spectraltools algorithm is re-implemented here as the baseline: a linear scan over
the percentiles 0, step, 2*step, ... that at every step clones the model
(`keras.models.clone_model` + `set_weights`), masks the nodes whose |eigenvalue| is below the
global percentile (their incoming `base` column, eigenvalue and bias are zeroed), compiles and
evaluates the clone, and stops at the first step over budget, returning the previous one.
Ours is `spectral.metric_based_pruning`. Both use the same budget rule (at most
`max_delta_percent` % of |unpruned value| worse; lower is better for losses) and the same
evaluation data (the digits test split).

Target: ours >= 5x faster and at least as pruned (nodes removed), for every configuration.

Run from the repository root::

    .venv/bin/python bench/pruning_speed.py            # writes bench/results/pruning_speed.*
    .venv/bin/python bench/pruning_speed.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np

import spectral
from bench.bench_output import (
    RESULTS_DIR,
    configure_logging,
    environment,
    markdown_table,
    summary,
    write_results,
)
from bench.digits_setup import (
    DigitsSplit,
    accuracy_on_test,
    compile_kwargs,
    eval_kwargs,
    load_digits_split,
    spectral_units,
    train_digits_model,
)

logger = logging.getLogger("bench.pruning_speed")

TARGET_SPEEDUP = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the trained model")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per algorithm")
    parser.add_argument("--step", type=float, default=5.0, help="percentile_step")
    parser.add_argument(
        "--configs",
        nargs="+",
        default=["accuracy:2", "loss:2", "accuracy:10", "loss:10"],
        help="compare_metric:max_delta_percent pairs",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="smoke run (3 epochs, 1 repeat)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 3
        args.repeats = 1
        args.configs = ["accuracy:2"]
    return args


# --- Baseline: the original package's algorithm -------------------------------------------------


def _is_lower_better(metric: str) -> bool:
    return "loss" in metric or "error" in metric


def _within_budget(value: float, reference: float, metric: str, max_delta_percent: float) -> bool:
    allowed = abs(reference) * max_delta_percent / 100.0
    if _is_lower_better(metric):
        return value <= reference + allowed
    return value >= reference - allowed


def _prunable_spectral_layers(model: keras.Model) -> list[spectral.Spectral]:
    outputs = set(model.output_names)
    return [
        layer
        for layer in model.layers
        if isinstance(layer, spectral.Spectral) and layer.name not in outputs
    ]


def masked_clone(model: keras.Model, percentile: float) -> tuple[keras.Model, int]:
    """Clones `model` and zeroes the nodes below the global |eigenvalue| percentile.

    Returns:
        `(clone, removed)`: the uncompiled clone and the number of masked nodes.
    """
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    layers = _prunable_spectral_layers(clone)
    magnitudes = [np.abs(np.asarray(keras.ops.convert_to_numpy(x.diag_end))[0]) for x in layers]
    cutoff = np.percentile(np.concatenate(magnitudes), percentile)
    removed = 0
    for layer, magnitude in zip(layers, magnitudes, strict=True):
        zero = magnitude < cutoff
        removed += int(zero.sum())
        base = np.array(keras.ops.convert_to_numpy(layer.base))
        diag_end = np.array(keras.ops.convert_to_numpy(layer.diag_end))
        base[:, zero] = 0.0
        diag_end[:, zero] = 0.0
        layer.base.assign(base)
        layer.diag_end.assign(diag_end)
        if layer.bias is not None:
            bias = np.array(keras.ops.convert_to_numpy(layer.bias))
            bias[zero] = 0.0
            layer.bias.assign(bias)
    return clone, removed


@dataclass
class BaselineResult:
    model: keras.Model
    percentile: float
    removed: int
    value: float
    evaluations: int


def original_metric_based_pruning(
    model: keras.Model,
    eval_dictionary: Mapping[str, Any],
    compile_dictionary: Mapping[str, Any],
    compare_metric: str,
    max_delta_percent: float,
    percentile_step: float,
) -> BaselineResult:
    """The original linear scan: clone, mask, compile and evaluate at every percentile."""
    chosen: BaselineResult | None = None
    reference = float("nan")
    percentile = 0.0
    evaluations = 0
    while percentile <= 100.0 + 1e-9:
        candidate, removed = masked_clone(model, percentile)
        candidate.compile(**dict(compile_dictionary))
        results = candidate.evaluate(**{**eval_dictionary, "return_dict": True, "verbose": 0})
        value = float(results[compare_metric])
        evaluations += 1
        if chosen is None:
            reference = value
        elif not _within_budget(value, reference, compare_metric, max_delta_percent):
            break
        chosen = BaselineResult(candidate, percentile, removed, value, evaluations)
        percentile = round(percentile + percentile_step, 10)
    assert chosen is not None
    chosen.evaluations = evaluations
    return chosen


# --- Measurement -----------------------------------------------------------------------------


def _timed(function: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def measure(
    model: keras.Model,
    data: DigitsSplit,
    metric: str,
    max_delta: float,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Times both algorithms `args.repeats` times (alternating) after one untimed warm-up."""
    evaluation = eval_kwargs(data)
    baseline_call = (
        original_metric_based_pruning,
        model,
        evaluation,
        compile_kwargs(),
        metric,
        max_delta,
        args.step,
    )
    ours_kwargs = {
        "compare_metric": metric,
        "max_delta_percent": max_delta,
        "percentile_step": args.step,
    }
    baseline_times, ours_times = [], []
    baseline: BaselineResult | None = None
    ours: keras.Model | None = None
    for repeat in range(args.repeats + 1):
        baseline, seconds_baseline = _timed(*baseline_call)
        ours, seconds_ours = _timed(
            spectral.metric_based_pruning, model, evaluation, compile_kwargs(), **ours_kwargs
        )
        label = "warm-up" if repeat == 0 else f"repeat {repeat}"
        logger.info(
            "%s:%g %s: original %.2fs, ours %.2fs",
            metric,
            max_delta,
            label,
            seconds_baseline,
            seconds_ours,
        )
        if repeat > 0:
            baseline_times.append(seconds_baseline)
            ours_times.append(seconds_ours)
    assert baseline is not None and ours is not None
    report = spectral.prune(
        model,
        eval_dictionary=evaluation,
        compile_dictionary=compile_kwargs(),
        **ours_kwargs,
    ).report
    units_before = spectral_units(model)
    ours_removed = report.nodes_removed_fraction
    baseline_removed = baseline.removed / units_before
    speedup = float(np.median(baseline_times) / np.median(ours_times))
    passed = speedup >= TARGET_SPEEDUP and ours_removed >= baseline_removed - 1e-12
    return {
        "compare_metric": metric,
        "max_delta_percent": max_delta,
        "percentile_step": args.step,
        "original": {
            "seconds": baseline_times,
            "time": summary(baseline_times),
            "percentile": baseline.percentile,
            "removed_fraction": baseline_removed,
            "evaluations": baseline.evaluations,
            "metric_value": baseline.value,
            "test_accuracy": accuracy_on_test(baseline.model, data),
            "params": baseline.model.count_params(),
        },
        "ours": {
            "seconds": ours_times,
            "time": summary(ours_times),
            "percentile": report.percentile,
            "removed_fraction": ours_removed,
            "units_after": spectral_units(ours),
            "evaluations": len(report.evaluations),
            "metric_before": report.metric_before,
            "metric_value": report.metric_after,
            "test_accuracy": accuracy_on_test(ours, data),
            "params": ours.count_params(),
        },
        "speedup_median": speedup,
        "passed": passed,
    }


def to_markdown(results: list[dict[str, Any]], args: argparse.Namespace, env: dict) -> str:
    rows = []
    for r in results:
        o, b = r["ours"], r["original"]
        rows.append(
            [
                f"{r['compare_metric']} ≤{r['max_delta_percent']:g} %",
                f"{b['time']['median']:.2f}",
                f"{o['time']['median']:.2f}",
                f"**{r['speedup_median']:.1f}×**",
                f"{b['percentile']:g} / {o['percentile']:g}",
                f"{100 * b['removed_fraction']:.1f} / {100 * o['removed_fraction']:.1f}",
                f"{b['evaluations']} / {o['evaluations']}",
                f"{100 * b['test_accuracy']:.2f} / {100 * o['test_accuracy']:.2f}",
                f"{b['params']} / {o['params']}",
                "PASS" if r["passed"] else "FAIL",
            ]
        )
    header = [
        "budget",
        "original (s)",
        "ours (s)",
        "speedup",
        "percentile (orig / ours)",
        "nodes removed % (orig / ours)",
        "evaluations (orig / ours)",
        "test accuracy % (orig / ours)",
        "params (orig / ours)",
        "target",
    ]
    overall = "PASS" if all(r["passed"] for r in results) else "FAIL"
    return (
        "# Pruning speed: metric-based pruning, ours vs the original linear scan\n\n"
        f"Digits model (seed {args.seed}, {args.epochs} epochs), evaluation data = test split "
        f"(360 images), percentile_step {args.step:g}. Median wall time of {args.repeats} runs "
        "after one untimed warm-up, runs alternating. The original returns a masked same-size "
        "model; ours a compacted one. "
        f"Backend {env['keras_backend']}, Keras {env['keras']}, {env['cpu_count']} CPUs, "
        f"{env['date_utc']}, commit {env.get('git_revision')}.\n\n"
        + markdown_table(header, rows)
        + f"\n**Target** (ours ≥ {TARGET_SPEEDUP:g}× faster and at least as pruned, every "
        f"budget): **{overall}**.\n"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    env = environment()
    logger.info("environment: %s", env)
    data = load_digits_split()
    model = train_digits_model(data, args.seed, args.epochs)
    logger.info("trained model: test accuracy %.4f", accuracy_on_test(model, data))
    results = []
    for config in args.configs:
        metric, max_delta = config.split(":")
        results.append(measure(model, data, metric, float(max_delta), args))
    payload = {
        "benchmark": "pruning_speed",
        "environment": env,
        "config": {
            "seed": args.seed,
            "epochs": args.epochs,
            "repeats": args.repeats,
            "percentile_step": args.step,
            "configs": args.configs,
            "target_speedup": TARGET_SPEEDUP,
        },
        "unpruned_test_accuracy": accuracy_on_test(model, data),
        "results": results,
        "passed": all(r["passed"] for r in results),
    }
    stem = "pruning_speed_quick" if args.quick else "pruning_speed"
    markdown = to_markdown(results, args, env)
    write_results(args.out_dir, stem, payload, markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
