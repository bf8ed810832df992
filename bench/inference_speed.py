"""Benchmark: forward-pass latency of compacted (sliced) against masked (zeroed) pruned models.

Model 784 -> Spectral(2000, relu) -> Spectral(2000, relu) -> Dense(10), random weights and random
eigenvalues (no training: only the eigenvalue ranking matters to pruning). For each fraction of
nodes removed it builds `prune_percentile(..., compact=True)` and `compact=False`, checks that
both give the same outputs, and times `predict_on_batch` on one batch (a compiled forward pass:
`tf.function` or `jax.jit` per backend) after warm-up, alternating the models each round. Also
records parameter counts and `.keras` file sizes.

Target: at 80 % of nodes removed the compacted model is >= 4x faster than the masked one.

Run from the repository root::

    .venv/bin/python bench/inference_speed.py            # writes bench/results/inference_speed.*
    .venv/bin/python bench/inference_speed.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import logging
import tempfile
import time
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

logger = logging.getLogger("bench.inference_speed")

TARGET_PERCENTILE = 80.0
TARGET_SPEEDUP = 4.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--inputs", type=int, default=784)
    parser.add_argument("--hidden", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--percentiles", type=float, nargs="+", default=[50.0, 80.0, 90.0])
    parser.add_argument("--warmup", type=int, default=10, help="untimed calls per model")
    parser.add_argument("--repeats", type=int, default=100, help="timed calls per model")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="smoke run (small model)")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden = 200
        args.warmup = 2
        args.repeats = 5
        args.percentiles = [80.0]
    return args


def build_model(args: argparse.Namespace) -> keras.Model:
    """The random two-hidden-layer Spectral model, eigenvalues drawn from N(0, 1)."""
    keras.utils.set_random_seed(args.seed)
    inputs = keras.Input(shape=(args.inputs,), name="pixels")
    x = spectral.Spectral(args.hidden, activation="relu", name="spectral_0")(inputs)
    x = spectral.Spectral(args.hidden, activation="relu", name="spectral_1")(x)
    outputs = keras.layers.Dense(10, name="logits")(x)
    model = keras.Model(inputs, outputs, name="wide_spectral")
    rng = np.random.default_rng(args.seed)
    for layer in model.layers:
        if isinstance(layer, spectral.Spectral):
            layer.diag_end.assign(rng.normal(size=(1, layer.units)).astype("float32"))
    return model


def file_size(model: keras.Model, directory: Path, name: str) -> int:
    path = directory / f"{name}.keras"
    model.save(path)
    return path.stat().st_size


def time_models(
    models: dict[str, keras.Model], batch: np.ndarray, warmup: int, repeats: int
) -> dict[str, list[float]]:
    """Seconds per `predict_on_batch` call, models interleaved so load changes hit all alike."""
    for model in models.values():
        for _ in range(warmup):
            model.predict_on_batch(batch)
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.predict_on_batch(batch)
            times[name].append(time.perf_counter() - start)
    return times


def measure(
    model: keras.Model, batch: np.ndarray, percentile: float, args: argparse.Namespace, tmp: Path
) -> dict[str, Any]:
    compact = spectral.prune_percentile(model, percentile, compact=True)
    masked = spectral.prune_percentile(model, percentile, compact=False)
    units = {
        layer.name: layer.units for layer in compact.layers if isinstance(layer, spectral.Spectral)
    }
    difference = float(
        np.max(np.abs(compact.predict_on_batch(batch) - masked.predict_on_batch(batch)))
    )
    models = {"unpruned": model, "masked": masked, "compact": compact}
    times = time_models(models, batch, args.warmup, args.repeats)
    stats = {name: summary(values) for name, values in times.items()}
    removed = 1.0 - sum(units.values()) / (2 * args.hidden)
    tag = f"p{percentile:g}"
    result = {
        "percentile": percentile,
        "removed_fraction": removed,
        "compact_units": units,
        "max_abs_output_difference": difference,
        "time": stats,
        "speedup_median": stats["masked"]["median"] / stats["compact"]["median"],
        "params": {name: m.count_params() for name, m in models.items()},
        "file_bytes": {
            "masked": file_size(masked, tmp, f"masked_{tag}"),
            "compact": file_size(compact, tmp, f"compact_{tag}"),
        },
    }
    logger.info(
        "percentile %g (%.1f %% removed): masked %.2f ms, compact %.2f ms, %.1fx; max |diff| %.2g",
        percentile,
        100 * removed,
        1e3 * stats["masked"]["median"],
        1e3 * stats["compact"]["median"],
        result["speedup_median"],
        difference,
    )
    return result


def plot(results: list[dict[str, Any]], batch_size: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{100 * r['removed_fraction']:.0f} % removed" for r in results]
    positions = np.arange(len(results))
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for offset, name in ((-0.27, "unpruned"), (0.0, "masked"), (0.27, "compact")):
        medians = [1e3 * r["time"][name]["median"] for r in results]
        p90 = [1e3 * r["time"][name]["p90"] for r in results]
        upper = np.clip(np.subtract(p90, medians), 0, None)
        ax.bar(positions + offset, medians, width=0.27, label=name, yerr=[0 * upper, upper])
    ax.set_xticks(positions, labels)
    ax.set_ylabel("predict_on_batch latency (ms, median; bar to p90)")
    ax.set_title(f"forward pass of one batch of {batch_size}: masked vs compacted")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(
    results: list[dict[str, Any]], target: dict[str, Any], args: argparse.Namespace, env: dict
) -> str:
    rows = []
    mib = 2**20
    for r in results:
        t, size = r["time"], r["file_bytes"]
        rows.append(
            [
                f"{r['percentile']:g}",
                f"{100 * r['removed_fraction']:.1f}",
                f"{1e3 * t['unpruned']['median']:.2f}",
                f"{1e3 * t['masked']['median']:.2f} / {1e3 * t['masked']['p90']:.2f}",
                f"{1e3 * t['compact']['median']:.2f} / {1e3 * t['compact']['p90']:.2f}",
                f"**{r['speedup_median']:.1f}×**",
                f"{r['params']['masked']:,} / {r['params']['compact']:,}",
                f"{size['masked'] / mib:.1f} / {size['compact'] / mib:.1f}",
                f"{r['max_abs_output_difference']:.1e}",
            ]
        )
    header = [
        "percentile",
        "nodes removed %",
        "unpruned median (ms)",
        "masked median / p90 (ms)",
        "compact median / p90 (ms)",
        "speedup",
        "params (masked / compact)",
        ".keras MiB (masked / compact)",
        "max abs Δ output",
    ]
    verdict = "PASS" if target["passed"] else "FAIL"
    return (
        "# Inference speed: compacted vs masked pruned models\n\n"
        f"Model {args.inputs} -> Spectral({args.hidden}, relu) -> Spectral({args.hidden}, relu) "
        f"-> Dense(10), random weights and N(0,1) eigenvalues, batch {args.batch_size}; "
        f"`predict_on_batch` after {args.warmup} warm-up calls, {args.repeats} timed calls per "
        "model, models interleaved. "
        f"Backend {env['keras_backend']}, Keras {env['keras']}, devices {env['devices']}, "
        f"{env['cpu_count']} CPUs, {env['date_utc']}, commit {env.get('git_revision')}.\n\n"
        + markdown_table(header, rows)
        + f"\n**Target** (compact ≥ {TARGET_SPEEDUP:g}× faster than masked at "
        f"{TARGET_PERCENTILE:g} % removed): **{verdict}**"
        + (f" ({target['speedup']:.1f}×).\n" if target.get("speedup") else ".\n")
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    env = environment()
    logger.info("environment: %s", env)
    model = build_model(args)
    batch = np.random.default_rng(args.seed + 1).random((args.batch_size, args.inputs))
    batch = batch.astype("float32")
    with tempfile.TemporaryDirectory() as tmp:
        unpruned_bytes = file_size(model, Path(tmp), "unpruned")
        results = [measure(model, batch, p, args, Path(tmp)) for p in args.percentiles]
    at_target = next((r for r in results if r["percentile"] == TARGET_PERCENTILE), None)
    target: dict[str, Any] = {"passed": False, "speedup": None}
    if at_target is not None:
        target = {
            "passed": at_target["speedup_median"] >= TARGET_SPEEDUP,
            "speedup": at_target["speedup_median"],
        }
    payload = {
        "benchmark": "inference_speed",
        "environment": env,
        "config": {
            "seed": args.seed,
            "inputs": args.inputs,
            "hidden": args.hidden,
            "batch_size": args.batch_size,
            "percentiles": args.percentiles,
            "warmup": args.warmup,
            "repeats": args.repeats,
        },
        "unpruned_params": model.count_params(),
        "unpruned_file_bytes": unpruned_bytes,
        "results": results,
        "target": target,
    }
    stem = "inference_speed_quick" if args.quick else "inference_speed"
    markdown = to_markdown(results, target, args, env)
    write_results(args.out_dir, stem, payload, markdown)
    plot(results, args.batch_size, args.out_dir / f"{stem}.png")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
