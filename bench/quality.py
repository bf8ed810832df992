"""Benchmark: test accuracy against the fraction of Spectral nodes removed, method by method.

Two tasks, each over several seeds: sklearn digits with the README's benchmark model, and a
harder synthetic 10-class problem (`make_classification`) with the same architecture. For each
trained model and each level of nodes removed (one cutoff per layer, so every hidden layer loses
the same fraction), it measures test accuracy and wall time of:

- ``masked``: today's pruning, `spectral.prune` with no data;
- ``reconstruct_mean`` / ``reconstruct``: the consumers of removed nodes re-fitted on calibration
  rows from the training split (`"mean"` and `"least_squares"`), no gradient step;
- ``finetune``: masked pruning + the recovery epochs (the old recipe, for comparison);
- ``recover`` / ``recover_distill``: least-squares reconstruction + recovery epochs, with labels
  only or with the unpruned model's outputs as soft targets as well;
- ``gradual``: the same total recovery epochs over k rounds of reconstruction + recovery;
- ``pretrain``: `spectral.eigenvalue_pretraining` (per-layer scope), trained from scratch;
- ranking ablation: ``reconstruct`` (and ``masked``) with nodes ranked by a Dense network's
  incoming-weight norm and at random instead of by |eigenvalue|.

Plus the metric job of issue 8: `spectral.prune` with a 2 % accuracy budget, with and without
reconstruction. The x axis everywhere is the fraction of Spectral nodes actually removed (units
before/after). `bench/quality_methods.py` holds the methods, `bench/quality_report.py` the tables,
targets and plot.

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
from typing import Any

import keras
import numpy as np

import spectral
from bench.bench_output import RESULTS_DIR, configure_logging, environment
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
)
from bench.quality_methods import (
    METHODS,
    SCOPE,
    Setting,
    Unavailable,
    api_paths,
    build_dense_model,
    dense_as_spectral,
    randomly_ranked,
    same_function,
)
from bench.quality_report import render

logger = logging.getLogger("bench.quality")

SYNTHETIC = {
    "n_samples": 4000,
    "n_features": 64,
    "n_informative": 32,
    "n_redundant": 16,
    "n_classes": 10,
    "n_clusters_per_class": 2,
    "class_sep": 1.5,
    "flip_y": 0.0,
    "random_state": 0,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=["digits", "synthetic"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--synthetic-seeds", type=int, nargs="+", default=None, help="default: --seeds"
    )
    parser.add_argument("--epochs", type=int, default=40, help="training epochs, digits")
    parser.add_argument("--synthetic-epochs", type=int, default=20, help="training epochs")
    parser.add_argument("--levels", type=float, nargs="+", default=[50, 70, 80, 90, 95])
    parser.add_argument("--methods", nargs="+", default=[*METHODS, "pretrain"])
    parser.add_argument(
        "--levels-for",
        nargs="*",
        default=["gradual=90,95"],
        metavar="METHOD=L1,L2",
        help="other levels for some methods, e.g. pretrain=90,95 gradual=80,90,95",
    )
    parser.add_argument("--rankings", nargs="*", default=["dense", "random"])
    parser.add_argument("--ranking-methods", nargs="*", default=["masked", "reconstruct"])
    parser.add_argument("--calibration-rows", type=int, default=2000)
    parser.add_argument("--recover-epochs", type=int, default=5)
    parser.add_argument("--gradual-steps", type=int, default=5)
    parser.add_argument("--gradual-epochs", type=int, default=1, help="recovery epochs per round")
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--budget", type=float, default=2.0, help="metric job, accuracy %%")
    parser.add_argument("--no-metric-job", action="store_true")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    parser.add_argument("--stem", default=None, help="output name (default quality[_quick])")
    parser.add_argument(
        "--revision",
        default=None,
        help="record this revision when running from an export without .git (git archive)",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 2 levels")
    parser.add_argument("--from-json", type=Path, default=None, help="re-render a run's JSON")
    parser.add_argument(
        "--merge-with",
        type=Path,
        default=None,
        help="an earlier run's JSON: its rows for (task, method, ranking) not measured in this "
        "run are kept, each with the revision that measured it",
    )
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.epochs = 5
        args.synthetic_epochs = 3
        args.levels = [80, 95]
        args.recover_epochs = 1
        args.gradual_steps = 2
        args.gradual_epochs = 1
        args.levels_for = ["gradual=95", "pretrain=95"]
    args.synthetic_seeds = args.synthetic_seeds or args.seeds
    method_levels = {}
    for item in args.levels_for:
        method, _, levels = item.partition("=")
        method_levels[method] = [float(level) for level in levels.split(",") if level]
    args.method_levels = method_levels
    return args


def load_synthetic_split() -> DigitsSplit:
    """A harder 10-class problem: `make_classification` (64 features), standardized, 75/25."""
    from sklearn.datasets import make_classification
    from sklearn.model_selection import train_test_split

    x, y = make_classification(**SYNTHETIC)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, stratify=y, random_state=0
    )
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    return DigitsSplit(
        ((x_train - mean) / std).astype("float32"),
        y_train.astype("int32"),
        ((x_test - mean) / std).astype("float32"),
        y_test.astype("int32"),
    )


def calibration_rows(data: DigitsSplit, rows: int, seed: int) -> np.ndarray:
    """`rows` training rows: every one once (shuffled), topped up by random repeats if short."""
    rng = np.random.default_rng(seed)
    n = len(data.x_train)
    index = rng.permutation(n)[:rows]
    if rows > n:
        index = np.concatenate([index, rng.choice(n, rows - n)])
    return data.x_train[index]


def train(model: keras.Model, data: DigitsSplit, seed: int, epochs: int) -> float:
    """Compiles and trains `model`; returns seconds."""
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    model.compile(**compile_kwargs())
    model.fit(**fit_kwargs(data, epochs), shuffle=True)
    return time.perf_counter() - start


def measure(
    task: str, seed: int, method: str, ranking: str, level: float, call: Any
) -> tuple[dict[str, Any], keras.Model] | None:
    """Runs `call()` (returns the pruned model and the units before), timed.

    Returns:
        The row (without accuracy) and the pruned model, or None if the library lacks the method.
    """
    keras.utils.set_random_seed(seed)
    start = time.perf_counter()
    try:
        pruned, units_before = call()
    except Unavailable as exc:
        logger.warning("%s %s: skipped (%s)", task, method, exc)
        return None
    seconds = time.perf_counter() - start
    units_after = spectral_units(pruned)
    row = {
        "task": task,
        "seed": seed,
        "method": method,
        "ranking": ranking,
        "level": level,
        "units_before": units_before,
        "units_after": units_after,
        "units_per_layer": spectral_units_per_layer(pruned),
        "removed_fraction": 1.0 - units_after / units_before,
        "params": int(pruned.count_params()),
        "seconds": seconds,
    }
    return row, pruned


def run_seed(
    task: str, data: DigitsSplit, seed: int, epochs: int, args: argparse.Namespace
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], keras.Model]:
    """All methods on one seed of one task: (accuracy rows, training rows, trained model)."""
    model = build_digits_model(seed)
    trained = [
        {
            "task": task,
            "seed": seed,
            "model": "spectral",
            "seconds": train(model, data, seed, epochs),
        }
    ]
    units = spectral_units(model)
    setting = Setting(
        data=data,
        calibration=calibration_rows(data, args.calibration_rows, seed),
        recover_epochs=args.recover_epochs,
        gradual_steps=args.gradual_steps,
        gradual_epochs=args.gradual_epochs,
        temperature=args.temperature,
    )
    models = {"spectral": model}
    if "dense" in args.rankings:
        dense = build_dense_model(seed, data.x_train.shape[1], int(data.y_train.max()) + 1)
        trained.append(
            {
                "task": task,
                "seed": seed,
                "model": "dense",
                "seconds": train(dense, data, seed, epochs),
            }
        )
        models["dense"] = dense_as_spectral(dense)
        same_function(dense, models["dense"], data.x_test)
    if "random" in args.rankings:
        models["random"] = randomly_ranked(model, seed)
        same_function(model, models["random"], data.x_test)
    rows = []
    for ranking, reference in models.items():
        if ranking == "random":
            continue  # the same function as the spectral model
        rows.append(
            {
                "task": task,
                "seed": seed,
                "method": "unpruned",
                "ranking": ranking,
                "level": 0.0,
                "units_before": units,
                "units_after": units,
                "removed_fraction": 0.0,
                "accuracy": accuracy_on_test(reference, data),
                "seconds": 0.0,
            }
        )
        logger.info(
            "%s seed %d: unpruned %s accuracy %.4f", task, seed, ranking, rows[-1]["accuracy"]
        )
    plan: list[tuple[str, str, float]] = []
    for method in args.methods:
        levels = args.method_levels.get(method, args.levels)
        plan += [(method, "spectral", level) for level in levels]
    for ranking in args.rankings:
        for method in args.ranking_methods:
            levels = args.method_levels.get(f"{ranking}:{method}", args.levels)
            plan += [(method, ranking, level) for level in levels]
    for method, ranking, level in plan:
        if method == "pretrain":
            call = _pretrain_call(data, seed, epochs, level)
        else:
            call = _method_call(models[ranking], method, level, setting)
        measured = measure(task, seed, method, ranking, level, call)
        if measured is None:
            continue
        row, pruned = measured
        row["accuracy"] = accuracy_on_test(pruned, data)
        rows.append(row)
        logger.info(
            "%s seed %d %s/%s at %g%%: %.1f%% removed, accuracy %.4f, %.2fs",
            task,
            seed,
            ranking,
            method,
            level,
            100 * row["removed_fraction"],
            row["accuracy"],
            row["seconds"],
        )
    return rows, trained, model


def _method_call(model: keras.Model, method: str, level: float, setting: Setting) -> Any:
    return lambda: (METHODS[method](model, level, setting), spectral_units(model))


def _pretrain_call(data: DigitsSplit, seed: int, epochs: int, level: float) -> Any:
    def run() -> tuple[keras.Model, int]:
        fresh = build_digits_model(seed)
        result = spectral.eigenvalue_pretraining(
            fresh,
            fit_kwargs(data, epochs),
            compile_dictionary=compile_kwargs(),
            percentile=level,
            fine_tune_kwargs=fit_kwargs(data, epochs),
            scope=SCOPE,
        )
        return result.model, spectral_units(fresh)

    return run


def build_readme_model(seed: int) -> keras.Model:
    """README's quick-start model: 64 -> Spectral(256) -> Spectral(128) -> Dense(10)."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((64,)),
            spectral.Spectral(256, activation="relu", use_bias=True, diag_regularizer="l2"),
            spectral.Spectral(128, activation="relu", use_bias=True, diag_regularizer="l2"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )


def metric_jobs(
    task: str, data: DigitsSplit, seed: int, model: keras.Model, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """`spectral.prune` with an accuracy budget on the test split, with/without reconstruction.

    On the trained benchmark model, and on digits also on the README's quick-start model
    trained as the README does (10 epochs, `"adam"`, batch 32).
    """
    models = {"benchmark model": model}
    if task == "digits":
        readme = build_readme_model(seed)
        start = time.perf_counter()
        keras.utils.set_random_seed(seed)
        readme.compile(
            optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        readme.fit(data.x_train, data.y_train, epochs=10, verbose=0)
        logger.info("README model trained in %.1fs", time.perf_counter() - start)
        models["README quick-start model"] = readme
    paths = api_paths()
    rows = []
    for name, model in models.items():
        for reconstruct in (None, "least_squares"):
            options: dict[str, Any] = {}
            if reconstruct is not None:
                if paths["metric_reconstruct"] != "prune":
                    logger.warning("metric job with reconstruction: prune() has no option yet")
                    continue
                x = calibration_rows(data, args.calibration_rows, seed)
                options = {"calibration": {"x": x}, "reconstruct": reconstruct}
            keras.utils.set_random_seed(seed)
            start = time.perf_counter()
            small, report = spectral.prune(
                model,
                eval_dictionary={"x": data.x_test, "y": data.y_test},
                compile_dictionary=compile_kwargs(),
                compare_metric="accuracy",
                max_delta_percent=args.budget,
                **options,
            )
            seconds = time.perf_counter() - start
            before, after = spectral_units(model), spectral_units(small)
            rows.append(
                {
                    "task": task,
                    "seed": seed,
                    "model": name,
                    "reconstruct": reconstruct,
                    "scope": report.scope,
                    "percentile": report.percentile,
                    "units_before": before,
                    "units_after": after,
                    "removed_fraction": 1.0 - after / before,
                    "accuracy_before": accuracy_on_test(model, data),
                    "accuracy": accuracy_on_test(small, data),
                    "seconds": seconds,
                }
            )
            logger.info("%s metric job %s reconstruct=%s: %s", task, name, reconstruct, rows[-1])
    return rows


def config(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "tasks": args.tasks,
        "seeds": {"digits": args.seeds, "synthetic": args.synthetic_seeds},
        "epochs": {"digits": args.epochs, "synthetic": args.synthetic_epochs},
        "levels": args.levels,
        "method_levels": args.method_levels,
        "methods": args.methods,
        "rankings": args.rankings,
        "ranking_methods": args.ranking_methods,
        "scope": SCOPE,
        "calibration_rows": args.calibration_rows,
        "recover_epochs": args.recover_epochs,
        "gradual_steps": args.gradual_steps,
        "gradual_epochs": args.gradual_epochs,
        "temperature": args.temperature,
        "budget_percent": args.budget,
        "synthetic": SYNTHETIC,
        "hidden_units": list(HIDDEN_UNITS),
        "base_l2": BASE_L2,
        "diag_l2": DIAG_L2,
        "learning_rate": LEARNING_RATE,
        "batch_size": BATCH_SIZE,
        "api_paths": api_paths(),
        "quick": args.quick,
    }


def merge(earlier: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """`current`, plus the rows of `earlier` for what `current` did not measure.

    A row is identified by task, ranking, method and level (metric jobs by task, model and
    reconstruction), so a later part may re-measure some levels of a method and keep the rest.
    """

    def run_key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["task"], row["ranking"], row["method"], row["level"])

    def measured(payload: dict[str, Any]) -> list[str]:
        levels: dict[str, list[float]] = {}
        for row in payload["runs"]:
            name = f"{row['task']}/{row['ranking']}/{row['method']}"
            levels.setdefault(name, []).append(row["level"])
        return [
            f"{name} @ {','.join(f'{v:g}' for v in sorted(set(values)))}"
            for name, values in levels.items()
        ]

    def parts(payload: dict[str, Any]) -> list[dict[str, Any]]:
        return payload.get("parts") or [
            {
                "environment": payload["environment"],
                "config": payload["config"],
                "wall_seconds": payload.get("wall_seconds"),
                "measured": measured(payload),
                "metric_jobs": sorted(
                    {f"{j['task']}/{j['model']}/{j['reconstruct']}" for j in payload["metric_jobs"]}
                ),
            }
        ]

    runs = {run_key(r) for r in current["runs"]}
    trained = {(r["task"], r["model"]) for r in current["training"]}
    jobs = {(j["task"], j["model"], j["reconstruct"]) for j in current["metric_jobs"]}
    config = dict(current["config"])
    config["levels"] = sorted({*earlier["config"]["levels"], *config["levels"]})
    return {
        **current,
        "config": config,
        "runs": [r for r in earlier["runs"] if run_key(r) not in runs] + current["runs"],
        "training": [r for r in earlier["training"] if (r["task"], r["model"]) not in trained]
        + current["training"],
        "metric_jobs": [
            j
            for j in earlier["metric_jobs"]
            if (j["task"], j["model"], j["reconstruct"]) not in jobs
        ]
        + current["metric_jobs"],
        "parts": parts(earlier) + parts(current),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    stem = args.stem or ("quality_quick" if args.quick else "quality")
    if args.from_json is not None:
        payload = json.loads(args.from_json.read_text())
        render(payload, args.from_json.parent, args.from_json.stem)
        return 0
    env = environment()
    if args.revision and env.get("git_revision") is None:
        env["git_revision"] = f"{args.revision} (exported tree)"
    logger.info("environment: %s; library %s, paths %s", env, spectral.__file__, api_paths())
    started = time.perf_counter()
    payload: dict[str, Any] = {
        "benchmark": "quality",
        "environment": env,
        "config": config(args),
        "runs": [],
        "training": [],
        "metric_jobs": [],
    }
    earlier = json.loads(args.merge_with.read_text()) if args.merge_with else None

    def write(quiet: bool) -> None:
        payload["wall_seconds"] = time.perf_counter() - started
        for row in (*payload["runs"], *payload["training"], *payload["metric_jobs"]):
            row.setdefault("revision", env.get("git_revision"))
        render(merge(earlier, payload) if earlier else payload, args.out_dir, stem, quiet=quiet)

    tasks = {
        "digits": (load_digits_split, args.seeds, args.epochs),
        "synthetic": (load_synthetic_split, args.synthetic_seeds, args.synthetic_epochs),
    }
    for task in args.tasks:
        loader, seeds, epochs = tasks[task]
        data = loader()
        for seed in seeds:
            rows, trained, model = run_seed(task, data, seed, epochs, args)
            payload["runs"] += rows
            payload["training"] += trained
            if not args.no_metric_job:
                payload["metric_jobs"] += metric_jobs(task, data, seed, model, args)
            write(quiet=True)  # partial results survive a kill
    write(quiet=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
