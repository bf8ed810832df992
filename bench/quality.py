"""Benchmark: digits test accuracy against the fraction of Spectral nodes removed.

Three ways to obtain a pruned model, each over several seeds:

- ``post``: train the full model, then `prune_percentile` (compact), no further training;
- ``post_finetune``: the same pruned model trained for a few more epochs;
- ``pretrain``: `eigenvalue_pretraining` (eigenvalues-only training, prune, train the compact
  model), run once per percentile on its own grid.

The x axis is the fraction of the 500 Spectral nodes actually removed (units before/after), not
the percentile argument. Target: the pre-training pipeline removes >= 90 % of the nodes while its
mean test accuracy stays within 1 point of the unpruned model's mean.

Run from the repository root::

    .venv/bin/python bench/quality.py            # full run, writes bench/results/quality.*
    .venv/bin/python bench/quality.py --quick    # smoke run, writes bench/results/quality_quick.*
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import time
from collections import defaultdict
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
    BASE_L2,
    BATCH_SIZE,
    DIAG_L2,
    HIDDEN_UNITS,
    LEARNING_RATE,
    DigitsSplit,
    accuracy_on_test,
    build_digits_model,
    compile_kwargs,
    fit_kwargs,
    load_digits_split,
    spectral_units,
    spectral_units_per_layer,
    train_digits_model,
)

logger = logging.getLogger("bench.quality")

METHODS = {
    "post": "post-training pruning, no fine-tune",
    "post_finetune": "post-training pruning + fine-tune",
    "pretrain": "eigenvalue pre-training pipeline",
}
TARGET_REMOVED = 0.90
TARGET_POINTS = 1.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=40, help="training epochs, full model")
    parser.add_argument("--finetune-epochs", type=int, default=5, help="post_finetune epochs")
    parser.add_argument("--step", type=float, default=5.0, help="percentile grid step (post*)")
    parser.add_argument("--max-percentile", type=float, default=95.0)
    parser.add_argument(
        "--pretrain-percentiles",
        type=float,
        nargs="+",
        default=[0, 50, 70, 80, 85, 90, 95],
        help="percentiles run through the pre-training pipeline",
    )
    parser.add_argument(
        "--pretrain-epochs", type=int, default=None, help="phase 1 epochs (default: --epochs)"
    )
    parser.add_argument(
        "--compact-epochs", type=int, default=None, help="phase 3 epochs (default: --epochs)"
    )
    parser.add_argument(
        "--scope",
        choices=["global", "layer"],
        default="global",
        help="one cutoff over both layers, or one per layer (results get a _layer suffix)",
    )
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (1 seed, 3 epochs)")
    parser.add_argument(
        "--from-json",
        type=Path,
        default=None,
        help="re-render the tables and plot of an earlier run's JSON, without training",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.epochs = 3
        args.finetune_epochs = 1
        args.step = 45.0
        args.max_percentile = 90.0
        args.pretrain_percentiles = [0, 90]
    args.pretrain_epochs = args.pretrain_epochs or args.epochs
    args.compact_epochs = args.compact_epochs or args.epochs
    return args


def percentile_grid(step: float, maximum: float) -> list[float]:
    count = int(np.floor(maximum / step + 1e-9))
    grid = [round(i * step, 6) for i in range(count + 1)]
    if grid[-1] < maximum:
        grid.append(maximum)
    return grid


def run_post_training(
    data: DigitsSplit, seed: int, grid: list[float], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Trains one full model, then prunes it at every percentile, with and without fine-tune."""
    start = time.perf_counter()
    model = train_digits_model(data, seed, args.epochs)
    logger.info(
        "seed %d: trained full model in %.1fs, test accuracy %.4f",
        seed,
        time.perf_counter() - start,
        accuracy_on_test(model, data),
    )
    units_before = spectral_units(model)
    rows = []
    for percentile in grid:
        pruned = spectral.prune_percentile(model, percentile, compile_kwargs(), scope=args.scope)
        units_after = spectral_units(pruned)
        common = {
            "seed": seed,
            "percentile": percentile,
            "units_before": units_before,
            "units_after": units_after,
            "units_per_layer": spectral_units_per_layer(pruned),
            "removed_fraction": 1.0 - units_after / units_before,
            "params": pruned.count_params(),
        }
        rows.append({**common, "method": "post", "accuracy": accuracy_on_test(pruned, data)})
        keras.utils.set_random_seed(seed)
        pruned.fit(**fit_kwargs(data, args.finetune_epochs))
        accuracy = accuracy_on_test(pruned, data)
        rows.append({**common, "method": "post_finetune", "accuracy": accuracy})
        logger.info(
            "seed %d, percentile %g: %d/%d nodes kept, accuracy %.4f -> %.4f after fine-tune",
            seed,
            percentile,
            units_after,
            units_before,
            rows[-2]["accuracy"],
            accuracy,
        )
    return rows


def run_pretraining(
    data: DigitsSplit, seed: int, percentiles: list[float], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Runs the whole eigenvalue pre-training pipeline once per percentile, same seed each."""
    rows = []
    for percentile in percentiles:
        start = time.perf_counter()
        model = build_digits_model(seed)
        result = spectral.eigenvalue_pretraining(
            model,
            fit_kwargs(data, args.pretrain_epochs),
            compile_dictionary=compile_kwargs(),
            percentile=percentile,
            fine_tune_kwargs=fit_kwargs(data, args.compact_epochs),
            scope=args.scope,
        )
        report = result.report
        units_before = sum(report.units_before.values())
        units_after = spectral_units(result.model)
        if report.masked_layers or units_after != sum(report.units_after.values()):
            logger.warning(
                "pretrain seed %d percentile %g: report says %s kept (masked %s), model has %d",
                seed,
                percentile,
                report.units_after,
                report.masked_layers,
                units_after,
            )
        accuracy = accuracy_on_test(result.model, data)
        rows.append(
            {
                "method": "pretrain",
                "seed": seed,
                "percentile": percentile,
                "units_before": units_before,
                "units_after": units_after,
                "units_per_layer": spectral_units_per_layer(result.model),
                "removed_fraction": 1.0 - units_after / units_before,
                "report_removed_fraction": report.nodes_removed_fraction,
                "params": result.model.count_params(),
                "accuracy": accuracy,
                "seconds": time.perf_counter() - start,
            }
        )
        logger.info(
            "seed %d, pretrain percentile %g: %d/%d nodes kept, accuracy %.4f (%.1fs)",
            seed,
            percentile,
            units_after,
            units_before,
            accuracy,
            rows[-1]["seconds"],
        )
    return rows


def aggregate(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds for each (method, percentile)."""
    groups: dict[tuple[str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row["method"], row["percentile"])].append(row)
    table = []
    for (method, percentile), group in sorted(
        groups.items(), key=lambda item: (list(METHODS).index(item[0][0]), item[0][1])
    ):
        accuracy = summary([r["accuracy"] for r in group])
        removed = summary([r["removed_fraction"] for r in group])
        table.append(
            {
                "method": method,
                "percentile": percentile,
                "removed_mean": removed["mean"],
                "removed_std": removed["std"],
                "accuracy_mean": accuracy["mean"],
                "accuracy_std": accuracy["std"],
                "params_mean": float(np.mean([r["params"] for r in group])),
                "units_per_layer_mean": {
                    name: float(np.mean([r["units_per_layer"][name] for r in group]))
                    for name in group[0].get("units_per_layer", {})
                },
                "seeds": len(group),
            }
        )
    return table


def check_target(table: list[dict[str, Any]]) -> dict[str, Any]:
    """The pre-training pipeline: >= 90 % nodes removed within 1 point of the unpruned model."""
    reference = next((r for r in table if r["method"] == "post" and r["removed_mean"] == 0.0), None)
    candidates = [
        r for r in table if r["method"] == "pretrain" and r["removed_mean"] >= TARGET_REMOVED - 1e-9
    ]
    if reference is None or not candidates:
        return {"passed": False, "reason": "no unpruned reference or no >=90% pretrain point"}
    threshold = reference["accuracy_mean"] - TARGET_POINTS / 100.0
    passing = [r for r in candidates if r["accuracy_mean"] >= threshold]
    if passing:
        best = max(passing, key=lambda r: (r["removed_mean"], r["accuracy_mean"]))
    else:
        best = max(candidates, key=lambda r: r["accuracy_mean"])
    return {
        "passed": bool(passing),
        "unpruned_accuracy_mean": reference["accuracy_mean"],
        "threshold": threshold,
        "best_point": best,
        "candidates": candidates,
    }


def plot(table: list[dict[str, Any]], target: dict[str, Any], scope: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, label in METHODS.items():
        points = [r for r in table if r["method"] == method]
        if not points:
            continue
        ax.errorbar(
            [100 * r["removed_mean"] for r in points],
            [100 * r["accuracy_mean"] for r in points],
            yerr=[100 * r["accuracy_std"] for r in points],
            marker="o",
            markersize=3,
            capsize=2,
            label=label,
        )
    if "unpruned_accuracy_mean" in target:
        ax.axhline(100 * target["unpruned_accuracy_mean"], color="grey", lw=0.8, ls="--")
        ax.axhline(100 * target["threshold"], color="red", lw=0.8, ls=":", label="unpruned - 1 pt")
    ax.axvline(100 * TARGET_REMOVED, color="red", lw=0.8, ls=":")
    ax.set_xlabel("Spectral nodes removed (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"digits, {scope} scope: accuracy vs nodes removed (mean ± std over seeds)")
    low = min(100 * (r["accuracy_mean"] - r["accuracy_std"]) for r in table)
    ax.set_ylim(max(low - 2, 0), 100)
    ax.legend(loc="lower left", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def to_markdown(
    table: list[dict[str, Any]], target: dict[str, Any], args: argparse.Namespace, env: dict
) -> str:
    rows = [
        [
            METHODS[r["method"]],
            f"{r['percentile']:g}",
            f"{100 * r['removed_mean']:.1f} ± {100 * r['removed_std']:.1f}",
            f"{100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f}",
            " / ".join(f"{u:.0f}" for u in r["units_per_layer_mean"].values()),
            f"{r['params_mean']:.0f}",
        ]
        for r in table
    ]
    verdict = "PASS" if target["passed"] else "FAIL"
    best = target.get("best_point")
    lines = [
        "# Quality: digits accuracy vs Spectral nodes removed",
        "",
        f"Model 64 -> Spectral{HIDDEN_UNITS[0]} -> Spectral{HIDDEN_UNITS[1]} -> Dense 10 "
        f"(relu, bias; L2 {BASE_L2:g} on base, {DIAG_L2:g} on eigenvalues), Adam "
        f"{LEARNING_RATE:g}, batch {BATCH_SIZE}, {args.epochs} epochs, seeds {args.seeds}, "
        f"pruning scope `{args.scope}`. "
        f"Fine-tune: {args.finetune_epochs} epochs. Pre-training pipeline: "
        f"{args.pretrain_epochs} eigenvalue-only epochs, then {args.compact_epochs} epochs of "
        "the compact model. Test split: 20 % stratified (360 images). Accuracy in %, "
        "mean ± std over seeds.",
        "",
        f"Backend {env['keras_backend']}, Keras {env['keras']}, TensorFlow {env['tensorflow']}, "
        f"{env['cpu_count']} CPUs, {env['date_utc']}, commit {env.get('git_revision')}.",
        "",
        markdown_table(
            [
                "method",
                "percentile",
                "nodes removed (%)",
                "test accuracy (%)",
                "nodes kept per layer (mean)",
                "params",
            ],
            rows,
        ),
        f"**Target** (pre-training pipeline removes >= {100 * TARGET_REMOVED:.0f} % of nodes "
        f"within {TARGET_POINTS:g} point of the unpruned mean): **{verdict}**.",
    ]
    if best is not None:
        lines.append(
            f"Unpruned mean {100 * target['unpruned_accuracy_mean']:.2f} %, threshold "
            f"{100 * target['threshold']:.2f} %; best point with >= 90 % removed: percentile "
            f"{best['percentile']:g}, {100 * best['removed_mean']:.1f} % removed, "
            f"{100 * best['accuracy_mean']:.2f} ± {100 * best['accuracy_std']:.2f} %."
        )
    return "\n".join(lines) + "\n"


def render(payload: dict[str, Any], args: argparse.Namespace, out_dir: Path, stem: str) -> None:
    """Aggregates `payload["runs"]`, checks the target, writes JSON, Markdown and PNG."""
    table = aggregate(payload["runs"])
    target = check_target(table)
    payload = {**payload, "summary": table, "target": target}
    markdown = to_markdown(table, target, args, payload["environment"])
    write_results(out_dir, stem, payload, markdown)
    plot(table, target, args.scope, out_dir / f"{stem}.png")
    logger.info("target %s", "PASS" if target["passed"] else "FAIL")
    print(markdown)


def rerender(path: Path, args: argparse.Namespace) -> int:
    payload = json.loads(path.read_text())
    for key in ("seeds", "scope", "epochs", "finetune_epochs", "pretrain_epochs", "compact_epochs"):
        setattr(args, key, payload["config"][key])
    render(payload, args, path.parent, path.stem)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    if args.from_json is not None:
        return rerender(args.from_json, args)
    env = environment()
    logger.info("environment: %s", env)
    data = load_digits_split()
    grid = percentile_grid(args.step, args.max_percentile)
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        rows += run_post_training(data, seed, grid, args)
        rows += run_pretraining(data, seed, args.pretrain_percentiles, args)
    stem = (
        "quality" + ("_layer" if args.scope == "layer" else "") + ("_quick" if args.quick else "")
    )
    payload = {
        "benchmark": "quality",
        "environment": env,
        "config": {
            "seeds": args.seeds,
            "scope": args.scope,
            "epochs": args.epochs,
            "finetune_epochs": args.finetune_epochs,
            "pretrain_epochs": args.pretrain_epochs,
            "compact_epochs": args.compact_epochs,
            "percentile_grid": grid,
            "pretrain_percentiles": args.pretrain_percentiles,
            "hidden_units": list(HIDDEN_UNITS),
            "base_l2": BASE_L2,
            "diag_l2": DIAG_L2,
            "learning_rate": LEARNING_RATE,
            "batch_size": BATCH_SIZE,
        },
        "wall_seconds": time.perf_counter() - started,
        "runs": rows,
    }
    render(payload, args, args.out_dir, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
