"""Tables, targets and plot of `bench/quality.py`, computed from its raw rows."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bench.bench_output import markdown_table, summary, write_results

logger = logging.getLogger("bench.quality")

TRAINING_METHODS = ("finetune", "recover", "recover_distill", "gradual")
NO_TRAINING_METHODS = ("masked", "reconstruct_mean", "reconstruct")
ORDER = (
    "masked",
    "reconstruct_mean",
    "reconstruct",
    "finetune",
    "recover",
    "recover_distill",
    "gradual",
    "pretrain",
    "dense:masked",
    "dense:reconstruct",
    "random:masked",
    "random:reconstruct",
)
TARGET_POINTS = 1.0
TARGETS = {"no_training": 0.80, "recovery": 0.95, "metric_job": 0.70, "reconstruct_seconds": 2.0}


def labels(config: dict[str, Any]) -> dict[str, str]:
    epochs, steps = config["recover_epochs"], config["gradual_steps"]
    per_round = config.get("gradual_epochs", 1)
    return {
        "masked": "masked/sliced, no data (today)",
        "reconstruct_mean": "reconstruction, mean",
        "reconstruct": "reconstruction, least squares",
        "finetune": f"masked + {epochs} epochs fine-tune",
        "recover": f"reconstruction + {epochs} epochs recovery",
        "recover_distill": f"reconstruction + {epochs} epochs recovery, distilled",
        "gradual": f"gradual: {steps} rounds × (reconstruction + {per_round} epoch"
        + ("s" if per_round > 1 else "")
        + ")",
        "pretrain": "eigenvalue pre-training pipeline",
        "dense:masked": "Dense weight-norm ranking, masked",
        "dense:reconstruct": "Dense weight-norm ranking, reconstruction",
        "random:masked": "random ranking, masked",
        "random:reconstruct": "random ranking, reconstruction",
    }


def key(row: dict[str, Any]) -> str:
    return row["method"] if row["ranking"] == "spectral" else f"{row['ranking']}:{row['method']}"


def reference_of(method: str) -> str:
    """Which unpruned model a method is compared with (a Dense ranking: the Dense network)."""
    return "dense" if method.startswith("dense:") else "spectral"


def aggregate(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per task: unpruned references and, per (method, level), mean/std of everything."""
    tasks: dict[str, Any] = {}
    groups: dict[tuple[str, str, float], list[dict[str, Any]]] = defaultdict(list)
    for row in runs:
        groups[(row["task"], key(row), row["level"])].append(row)
    for (task, method, level), group in groups.items():
        entry = tasks.setdefault(task, {"unpruned": {}, "points": []})
        accuracy = summary([r["accuracy"] for r in group])
        if method in ("unpruned", "dense:unpruned"):
            entry["unpruned"][reference_of(method)] = {
                "accuracy_mean": accuracy["mean"],
                "accuracy_std": accuracy["std"],
                "seeds": accuracy["n"],
            }
            continue
        removed = summary([r["removed_fraction"] for r in group])
        seconds = summary([r["seconds"] for r in group])
        entry["points"].append(
            {
                "method": method,
                "level": level,
                "removed_mean": removed["mean"],
                "removed_std": removed["std"],
                "accuracy_mean": accuracy["mean"],
                "accuracy_std": accuracy["std"],
                "seconds_mean": seconds["mean"],
                "seconds_median": seconds["median"],
                "params_mean": float(np.mean([r["params"] for r in group])),
                "units_per_layer_mean": {
                    name: float(np.mean([r["units_per_layer"][name] for r in group]))
                    for name in group[0]["units_per_layer"]
                },
                "seeds": accuracy["n"],
            }
        )
    for entry in tasks.values():
        entry["points"].sort(
            key=lambda p: (ORDER.index(p["method"]) if p["method"] in ORDER else 99, p["level"])
        )
        entry["methods"] = {}
        for method in dict.fromkeys(p["method"] for p in entry["points"]):
            reference = entry["unpruned"].get(reference_of(method))
            points = [p for p in entry["points"] if p["method"] == method]
            within = []
            if reference is not None:
                threshold = reference["accuracy_mean"] - TARGET_POINTS / 100
                within = [p for p in points if p["accuracy_mean"] >= threshold]
            entry["methods"][method] = {
                "largest_removed_within_1pt": max(
                    (p["removed_mean"] for p in within), default=None
                ),
                "seconds_median": float(np.median([p["seconds_median"] for p in points])),
                "levels": [p["level"] for p in points],
            }
    return tasks


def reconstruction_overhead(runs: list[dict[str, Any]], task: str) -> dict[str, Any] | None:
    """Seconds `reconstruct` takes beyond `masked`, paired by seed and level (spectral ranking)."""
    masked = {
        (r["seed"], r["level"]): r["seconds"]
        for r in runs
        if r["task"] == task and r["method"] == "masked" and r["ranking"] == "spectral"
    }
    extra = [
        r["seconds"] - masked[(r["seed"], r["level"])]
        for r in runs
        if r["task"] == task
        and r["method"] == "reconstruct"
        and r["ranking"] == "spectral"
        and (r["seed"], r["level"]) in masked
    ]
    return summary(extra) if extra else None


def check_targets(payload: dict[str, Any], tasks: dict[str, Any]) -> dict[str, Any]:
    """Issue 8's targets, on digits (mean of the seeds)."""
    digits = tasks.get("digits")
    if digits is None:
        return {}
    methods = digits["methods"]

    def best(candidates: tuple[str, ...]) -> tuple[str | None, float | None]:
        found = [(m, methods[m]["largest_removed_within_1pt"]) for m in candidates if m in methods]
        found = [(m, v) for m, v in found if v is not None]
        return max(found, key=lambda item: item[1]) if found else (None, None)

    config = payload["config"]
    training = tuple(
        m
        for m in TRAINING_METHODS
        if m != "gradual" or config["gradual_steps"] * config.get("gradual_epochs", 1) <= 5
    )
    targets: dict[str, Any] = {}
    for name, candidates in (("no_training", NO_TRAINING_METHODS), ("recovery", training)):
        method, value = best(candidates)
        targets[name] = {
            "goal": f">= {100 * TARGETS[name]:.0f} % removed within 1 point",
            "best_method": method,
            "largest_removed_within_1pt": value,
            "passed": value is not None and value >= TARGETS[name] - 1e-9,
            "measured": any(m in methods for m in candidates),
        }
    jobs = [
        j
        for j in payload.get("metric_jobs", [])
        if j["task"] == "digits" and j["model"] == "benchmark model"
    ]
    with_recon = [j["removed_fraction"] for j in jobs if j["reconstruct"]]
    targets["metric_job"] = {
        "goal": f">= {100 * TARGETS['metric_job']:.0f} % removed, 2 % budget + reconstruction",
        "removed_mean": float(np.mean(with_recon)) if with_recon else None,
        "passed": bool(with_recon) and float(np.mean(with_recon)) >= TARGETS["metric_job"],
        "measured": bool(with_recon),
    }
    overhead = reconstruction_overhead(payload["runs"], "digits")
    targets["reconstruct_seconds"] = {
        "goal": f"reconstruction adds <= {TARGETS['reconstruct_seconds']:g} s "
        f"({config['calibration_rows']} calibration rows)",
        "overhead": overhead,
        # Judged on the median: the machine is shared, and single calls catch other jobs' load.
        "passed": overhead is not None and overhead["median"] <= TARGETS["reconstruct_seconds"],
        "measured": overhead is not None,
    }
    return targets


def _cell(point: dict[str, Any] | None, seeds: int = 0) -> str:
    if point is None:
        return "-"
    cell = f"{100 * point['accuracy_mean']:.2f} ± {100 * point['accuracy_std']:.2f}"
    return cell + (f" ({point['seeds']} seeds)" if point["seeds"] < seeds else "")


def task_tables(task: str, entry: dict[str, Any], config: dict[str, Any]) -> list[str]:
    names = labels(config)
    levels = config["levels"]
    unpruned = entry["unpruned"]
    seeds = max((p["seeds"] for p in entry["points"]), default=0)
    rows = []
    for method, info in entry["methods"].items():
        by_level = {p["level"]: p for p in entry["points"] if p["method"] == method}
        largest = info["largest_removed_within_1pt"]
        rows.append(
            [
                names.get(method, method),
                *[_cell(by_level.get(level), seeds) for level in levels],
                "none" if largest is None else f"{100 * largest:.0f} %",
                f"{info['seconds_median']:.2f}",
            ]
        )
    header = [
        "method",
        *[f"{level:g} % removed" for level in levels],
        "largest % removed within 1 pt",
        "s per model (median)",
    ]
    references = ", ".join(
        f"{name} {100 * ref['accuracy_mean']:.2f} ± {100 * ref['accuracy_std']:.2f} %"
        for name, ref in unpruned.items()
    )
    lines = [
        f"## {task}",
        "",
        f"Unpruned test accuracy: {references} (the Dense network is the reference of the "
        "Dense ranking rows; every other row is compared with the Spectral network).",
        "",
        markdown_table(header, rows),
    ]
    ablation = []
    for level in levels:
        cells = []
        for method in (
            "reconstruct",
            "dense:reconstruct",
            "random:reconstruct",
            "masked",
            "dense:masked",
            "random:masked",
        ):
            point = next(
                (p for p in entry["points"] if p["method"] == method and p["level"] == level), None
            )
            ref = unpruned.get(reference_of(method))
            if point is None or ref is None:
                cells.append("-")
                continue
            drop = 100 * (ref["accuracy_mean"] - point["accuracy_mean"])
            cells.append(f"{drop:+.2f}")
        ablation.append([f"{level:g} %", *cells])
    lines += [
        "Ranking ablation: points lost against each network's own unpruned mean (lower is "
        "better), same calibration rows.",
        "",
        markdown_table(
            [
                "removed",
                "spectral, reconstr.",
                "Dense norm, reconstr.",
                "random, reconstr.",
                "spectral, masked",
                "Dense norm, masked",
                "random, masked",
            ],
            ablation,
        ),
    ]
    return lines


def detail_table(tasks: dict[str, Any], config: dict[str, Any]) -> list[str]:
    names = labels(config)
    rows = []
    for task, entry in tasks.items():
        for p in entry["points"]:
            rows.append(
                [
                    task,
                    names.get(p["method"], p["method"]),
                    f"{p['level']:g}",
                    f"{100 * p['removed_mean']:.1f} ± {100 * p['removed_std']:.1f}",
                    " / ".join(f"{u:.0f}" for u in p["units_per_layer_mean"].values()),
                    f"{p['params_mean']:.0f}",
                    _cell(p),
                    f"{p['seconds_mean']:.2f}",
                    str(p["seeds"]),
                ]
            )
    header = [
        "task",
        "method",
        "percentile",
        "removed (%)",
        "kept per layer",
        "params",
        "accuracy (%)",
        "s (mean)",
        "seeds",
    ]
    return ["## All points", "", markdown_table(header, rows)]


def target_lines(targets: dict[str, Any]) -> list[str]:
    if not targets:
        return []
    lines = ["## Targets (digits, mean over seeds)", ""]
    for name, target in targets.items():
        verdict = "PASS" if target["passed"] else ("FAIL" if target["measured"] else "NOT MEASURED")
        if name in ("no_training", "recovery"):
            value = target["largest_removed_within_1pt"]
            detail = (
                f"best: {target['best_method']}, {100 * value:.0f} % removed within 1 point"
                if value is not None
                else "no measured level within 1 point"
            )
        elif name == "metric_job":
            value = target["removed_mean"]
            detail = "-" if value is None else f"{100 * value:.1f} % removed (mean)"
        else:
            o = target["overhead"]
            detail = (
                "-"
                if o is None
                else (
                    f"median {o['median']:.2f} s, max {o['max']:.2f} s over {o['n']} prunings; "
                    "judged on the median"
                )
            )
        lines.append(f"- {target['goal']}: **{verdict}** ({detail})")
    return [*lines, ""]


def metric_job_lines(payload: dict[str, Any]) -> list[str]:
    jobs = payload.get("metric_jobs", [])
    if not jobs:
        return []
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for job in jobs:
        groups[(job["task"], job["model"], job["reconstruct"] or "none")].append(job)
    rows = []
    for (task, model, reconstruct), group in groups.items():
        removed = summary([j["removed_fraction"] for j in group])
        before = summary([j["accuracy_before"] for j in group])
        after = summary([j["accuracy"] for j in group])
        seconds = summary([j["seconds"] for j in group])
        rows.append(
            [
                task,
                model,
                reconstruct,
                group[0]["scope"],
                f"{100 * removed['mean']:.1f} ± {100 * removed['std']:.1f}",
                f"{100 * before['mean']:.2f} -> {100 * after['mean']:.2f}",
                f"{seconds['median']:.2f}",
                str(removed["n"]),
            ]
        )
    budget = payload["config"]["budget_percent"]
    return [
        f"## Metric job: `spectral.prune` with a {budget:g} % accuracy budget",
        "",
        "Search data: the test split (as in `pruning_speed.py`), so accuracy after is "
        "in-sample for the search.",
        "",
        markdown_table(
            ["task", "model", "reconstruct", "scope", "removed (%)", "accuracy (%)", "s", "seeds"],
            rows,
        ),
    ]


def timing_lines(payload: dict[str, Any]) -> list[str]:
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for row in payload.get("training", []):
        groups[(row["task"], row["model"])].append(row["seconds"])
    rows = [[task, model, f"{np.median(values):.1f}"] for (task, model), values in groups.items()]
    lines = [
        "Training the unpruned networks (s, median):",
        "",
        markdown_table(["task", "network", "s"], rows),
    ]
    for task in dict.fromkeys(r["task"] for r in payload["runs"]):
        overhead = reconstruction_overhead(payload["runs"], task)
        if overhead:
            lines.append(
                f"Least-squares reconstruction on {task} adds {overhead['median']:.2f} s "
                f"(median; max {overhead['max']:.2f} s) to a pruning, paired by seed and level."
            )
    return [*lines, ""]


def to_markdown(payload: dict[str, Any], tasks: dict[str, Any], targets: dict[str, Any]) -> str:
    config, env = payload["config"], payload["environment"]
    seeds, epochs = config["seeds"], config["epochs"]
    head = [
        "# Quality: test accuracy against Spectral nodes removed",
        "",
        f"Model: inputs -> Spectral{config['hidden_units'][0]} -> "
        f"Spectral{config['hidden_units'][1]} -> Dense 10 (relu, bias; L2 {config['base_l2']:g} "
        f"on base, {config['diag_l2']:g} on eigenvalues), Adam {config['learning_rate']:g}, "
        f"batch {config['batch_size']}. Digits: {epochs['digits']} epochs, seeds "
        f"{seeds['digits']}, 360 test images. Synthetic (`make_classification`, "
        f"{config['synthetic']['n_informative']} informative of "
        f"{config['synthetic']['n_features']} features, 10 classes, "
        f"{config['synthetic']['n_samples']} samples, 25 % test): {epochs['synthetic']} epochs, "
        f'seeds {seeds["synthetic"]}. One cutoff per layer (`scope="{config["scope"]}"`). '
        f"Calibration: {config['calibration_rows']} training rows. Recovery: "
        f"{config['recover_epochs']} epochs on the training split; distillation temperature "
        f"{config['temperature']:g}; gradual: {config['gradual_steps']} rounds of "
        f"{config.get('gradual_epochs', 1)} recovery epoch(s). Pre-training "
        "pipeline: as many eigenvalue epochs, then compact-model epochs, as the task's training. "
        "Accuracy in %, mean ± std over seeds. Seconds: the whole pruning call (reconstruction "
        "and recovery included), median per model.",
        "",
        f"Backend {env['keras_backend']}, Keras {env['keras']}, TensorFlow {env['tensorflow']}, "
        f"{env['cpu_count']} CPUs, {env['date_utc']}, commit {env.get('git_revision')}. "
        f"Library paths: {config['api_paths']}. Wall time "
        f"{'of the last part ' if payload.get('parts') else ''}"
        f"{payload.get('wall_seconds', 0):.0f} s.",
        "",
    ]
    for number, part in enumerate(payload.get("parts", []), start=1):
        penv = part["environment"]
        head += [
            f"- Part {number}: commit {penv.get('git_revision')}, {penv['date_utc']}, "
            f"{part.get('wall_seconds') or 0:.0f} s, library paths {part['config']['api_paths']}; "
            f"measured (task/ranking/method @ levels): {'; '.join(part['measured'])}; "
            f"metric jobs: {', '.join(part.get('metric_jobs', [])) or 'none'}.",
        ]
    if payload.get("parts"):
        head += [
            "",
            "A later part replaces an earlier part's rows for the same task, ranking, method "
            "and level. Times from different parts ran under different machine load.",
            "",
        ]
    body: list[str] = [*target_lines(targets)]
    for task, entry in tasks.items():
        body += task_tables(task, entry, config)
    body += metric_job_lines(payload)
    body += timing_lines(payload)
    body += detail_table(tasks, config)
    return "\n".join(head + body) + "\n"


STYLE = {
    "masked": ("tab:gray", "-", "o"),
    "reconstruct_mean": ("tab:olive", "-", "v"),
    "reconstruct": ("tab:blue", "-", "o"),
    "finetune": ("tab:brown", "-", "s"),
    "recover": ("tab:green", "-", "s"),
    "recover_distill": ("tab:purple", "-", "D"),
    "gradual": ("tab:orange", "-", "^"),
    "pretrain": ("tab:red", "-", "*"),
    "dense:masked": ("tab:cyan", ":", "x"),
    "dense:reconstruct": ("tab:cyan", "--", "x"),
    "random:masked": ("black", ":", "+"),
    "random:reconstruct": ("black", "--", "+"),
}


def plot(tasks: dict[str, Any], config: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = labels(config)
    spectral_methods = [m for m in ORDER if ":" not in m]
    groups = (
        ("methods (|eigenvalue| ranking)", spectral_methods, False),
        ("methods, zoomed to the unpruned mean - 10 points", spectral_methods, True),
        ("ranking ablation", ["masked", "reconstruct", *[m for m in ORDER if ":" in m]], False),
    )
    fig, axes = plt.subplots(
        len(groups), len(tasks), figsize=(5.5 * len(tasks) + 3.5, 13), squeeze=False
    )
    for column, (task, entry) in enumerate(tasks.items()):
        for row, (title, methods, zoom) in enumerate(groups):
            ax = axes[row][column]
            lows = []
            for method in methods:
                points = [p for p in entry["points"] if p["method"] == method]
                if not points:
                    continue
                xs = [100 * p["removed_mean"] for p in points]
                ys = [100 * p["accuracy_mean"] for p in points]
                errs = [100 * p["accuracy_std"] for p in points]
                color, style, marker = STYLE.get(method, (None, "-", "o"))
                ax.errorbar(
                    xs,
                    ys,
                    yerr=errs,
                    color=color,
                    ls=style,
                    marker=marker,
                    markersize=4,
                    capsize=2,
                    lw=1.2,
                    label=names.get(method, method),
                )
                lows += [y - e for y, e in zip(ys, errs, strict=True)]
            for name, ref in entry["unpruned"].items():
                if name == "dense" and row != len(groups) - 1:
                    continue
                color = "tab:cyan" if name == "dense" else "tab:red"
                ax.axhline(
                    100 * ref["accuracy_mean"],
                    color=color,
                    lw=0.8,
                    ls="-",
                    alpha=0.6,
                    label=f"unpruned {'Dense' if name == 'dense' else 'Spectral'} network",
                )
                ax.axhline(
                    100 * ref["accuracy_mean"] - TARGET_POINTS,
                    color=color,
                    lw=0.8,
                    ls=":",
                    label="its unpruned mean - 1 point",
                )
            ax.set_ylim(max(min(lows, default=0) - 3, 0), 100)
            spectral_ref = entry["unpruned"].get("spectral")
            if zoom and spectral_ref:
                top = 100 * spectral_ref["accuracy_mean"]
                ax.set_ylim(top - 10, min(top + 2, 100))
            levels = sorted({p["removed_mean"] for p in entry["points"]})
            ax.set_xlim(100 * levels[0] - 3, 100 * levels[-1] + 2)
            ax.set_xticks(sorted({round(100 * level) for level in levels}))
            ax.set_xlabel("Spectral nodes removed (%)")
            ax.set_ylabel("test accuracy (%)")
            unpruned = ", ".join(
                f"{name} {100 * ref['accuracy_mean']:.2f} %"
                for name, ref in entry["unpruned"].items()
            )
            ax.set_title(f"{task}: {title}\n(unpruned: {unpruned})", fontsize=9)
            ax.grid(alpha=0.3)
            if column == len(tasks) - 1 and row != 1:
                ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.suptitle("test accuracy vs Spectral nodes removed (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(payload: dict[str, Any], out_dir: Path, stem: str, quiet: bool = False) -> None:
    """Aggregates `payload["runs"]`, checks the targets, writes JSON, Markdown and PNG."""
    tasks = aggregate(payload["runs"])
    targets = check_targets(payload, tasks)
    payload = {**payload, "summary": tasks, "targets": targets}
    markdown = to_markdown(payload, tasks, targets)
    write_results(out_dir, stem, payload, markdown)
    if tasks:
        plot(tasks, payload["config"], out_dir / f"{stem}.png")
    if not quiet:
        for name, target in targets.items():
            logger.info("target %s: %s", name, "PASS" if target["passed"] else "FAIL")
        print(markdown)
