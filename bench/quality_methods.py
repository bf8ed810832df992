"""The pruning methods `bench/quality.py` compares, each as a user would call the library.

Every method takes a trained model and a per-layer percentile and returns the pruned model. Where
`spectral.prune` has the data-aware options (`calibration`, `reconstruct`, `recover`, `distill`,
`steps`), the method calls them; on a checkout that only has the modules
(`spectral.reconstruction.reconstruct`, `spectral.recovery.recover`), it prunes with
`spectral.prune` and calls those directly. `api_paths()` says which path each method took, and the
results record it.

Also here: the ranking baselines of the ablation. `dense_as_spectral` writes a trained Dense
network as Spectral layers whose |eigenvalue| is the node's incoming-weight norm;
`randomly_ranked` gives a Spectral network random eigenvalue magnitudes without changing what it
computes. Both are then pruned by the library like any Spectral network.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import keras
import numpy as np

import spectral
from bench.digits_setup import BASE_L2, BATCH_SIZE, HIDDEN_UNITS, DigitsSplit, compile_kwargs
from spectral import Spectral

logger = logging.getLogger("bench.quality")

SCOPE = "layer"  # one cutoff per layer: removes the same fraction of every hidden layer


class Unavailable(RuntimeError):
    """The library in this checkout does not offer what a method needs."""


def _module(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def prune_parameters() -> set[str]:
    return set(inspect.signature(spectral.prune).parameters)


def api_paths() -> dict[str, str]:
    """How this checkout offers each feature: `"prune"` (public option), `"module"` or `"none"`."""
    params = prune_parameters()
    reconstruction = _module("spectral.reconstruction")
    recovery = _module("spectral.recovery")

    def path(option: str, module: Any, attribute: str) -> str:
        if option in params:
            return "prune"
        return "module" if module is not None and hasattr(module, attribute) else "none"

    return {
        "reconstruct": path("reconstruct", reconstruction, "reconstruct"),
        "recover": path("recover", recovery, "recover"),
        "distill": "prune" if "distill" in params else path("", recovery, "recover"),
        "steps": "prune" if "steps" in params else path("", recovery, "recover"),
        "metric_reconstruct": "prune" if "reconstruct" in params else "none",
    }


@dataclass
class Setting:
    """What every method of one task shares: data, calibration rows, recovery recipe."""

    data: DigitsSplit
    calibration: np.ndarray
    recover_epochs: int
    gradual_steps: int
    gradual_epochs: int  # per round, as `prune(steps=k, recover={"epochs": ...})` counts them
    temperature: float
    batch_size: int = BATCH_SIZE
    paths: dict[str, str] = field(default_factory=api_paths)

    def recover_dictionary(self, epochs: int | None = None) -> dict[str, Any]:
        return {
            "x": self.data.x_train,
            "y": self.data.y_train,
            "epochs": self.recover_epochs if epochs is None else epochs,
            "batch_size": self.batch_size,
        }


def _model_of(result: Any) -> keras.Model:
    """The model out of a `PruningResult`, a `(model, ...)` tuple or a bare model."""
    if isinstance(result, keras.Model):
        return result
    model = getattr(result, "model", None)
    if isinstance(model, keras.Model):
        return model
    if isinstance(result, tuple) and isinstance(result[0], keras.Model):
        return result[0]
    raise TypeError(f"cannot find the model in {type(result).__name__}")


def _prune(model: keras.Model, percentile: float, **options: Any) -> keras.Model:
    return _model_of(
        spectral.prune(
            model,
            percentile=percentile,
            compile_dictionary=compile_kwargs(),
            scope=SCOPE,
            **options,
        )
    )


def _reconstruct_module(original: keras.Model, pruned: keras.Model, x: np.ndarray, kind: str):
    module = _module("spectral.reconstruction")
    if module is None or not hasattr(module, "reconstruct"):
        raise Unavailable("spectral.reconstruction.reconstruct is not in this checkout")
    module.reconstruct(original, pruned, x, method=kind)


def _recover_module(
    pruned: keras.Model, setting: Setting, teacher: keras.Model | None, epochs: int | None = None
) -> keras.Model:
    module = _module("spectral.recovery")
    if module is None or not hasattr(module, "recover"):
        raise Unavailable("spectral.recovery.recover is not in this checkout")
    fit = setting.recover_dictionary(epochs)
    options: dict[str, Any] = {}
    if teacher is not None:
        options = {"teacher": teacher, "distill": True, "temperature": setting.temperature}
    result = module.recover(
        pruned,
        x=fit["x"],
        y=fit["y"],
        epochs=fit["epochs"],
        batch_size=fit["batch_size"],
        compile_dictionary=compile_kwargs(),
        **options,
    )
    try:
        return _model_of(result)
    except TypeError:
        return pruned  # trained in place


def masked(model: keras.Model, percentile: float, setting: Setting) -> keras.Model:
    """Today's pruning: slice the nodes out, fold act(0) into the consumers, no data."""
    return _prune(model, percentile)


def reconstruction(kind: str) -> Callable[[keras.Model, float, Setting], keras.Model]:
    def method(model: keras.Model, percentile: float, setting: Setting) -> keras.Model:
        calibration = {"x": setting.calibration}
        if setting.paths["reconstruct"] == "prune":
            return _prune(model, percentile, calibration=calibration, reconstruct=kind)
        pruned = _prune(model, percentile)
        _reconstruct_module(model, pruned, setting.calibration, kind)
        return pruned

    method.__name__ = f"reconstruction_{kind}"
    return method


def finetune(model: keras.Model, percentile: float, setting: Setting) -> keras.Model:
    """Masked pruning, then the same recovery epochs without reconstruction (the old recipe)."""
    if setting.paths["recover"] == "prune":
        return _prune(model, percentile, recover=setting.recover_dictionary())
    return _recover_module(_prune(model, percentile), setting, None)


def recovery(distill: bool) -> Callable[[keras.Model, float, Setting], keras.Model]:
    def method(model: keras.Model, percentile: float, setting: Setting) -> keras.Model:
        if setting.paths["recover"] == "prune" and setting.paths["reconstruct"] == "prune":
            options: dict[str, Any] = {}
            if distill:
                options = {"distill": True, "temperature": setting.temperature}
            return _prune(
                model,
                percentile,
                calibration={"x": setting.calibration},
                reconstruct="least_squares",
                recover=setting.recover_dictionary(),
                **options,
            )
        pruned = reconstruction("least_squares")(model, percentile, setting)
        return _recover_module(pruned, setting, model if distill else None)

    method.__name__ = "recovery_distill" if distill else "recovery"
    return method


def gradual(model: keras.Model, percentile: float, setting: Setting) -> keras.Model:
    """`steps` rounds of reconstruction + recovery, reaching `percentile` in the last round."""
    steps = setting.gradual_steps
    if setting.paths["steps"] == "prune" and setting.paths["reconstruct"] == "prune":
        return _prune(
            model,
            percentile,
            calibration={"x": setting.calibration},
            reconstruct="least_squares",
            recover=setting.recover_dictionary(setting.gradual_epochs),
            steps=steps,
        )
    # Without `steps`: the same schedule by hand. Round r keeps (1 - r/steps * p) of the
    # original nodes, which is this percentile of the nodes still there. Each round is
    # reconstructed against the previous round's model (the module cannot be told which of the
    # original nodes survive once recovery has moved the eigenvalues).
    fraction = percentile / 100.0
    current = model
    for r in range(1, steps + 1):
        kept_before = 1.0 - fraction * (r - 1) / steps
        kept_after = 1.0 - fraction * r / steps
        round_percentile = 100.0 * (1.0 - kept_after / kept_before)
        pruned = _prune(current, round_percentile)
        _reconstruct_module(current, pruned, setting.calibration, "least_squares")
        current = _recover_module(pruned, setting, None, setting.gradual_epochs)
    return current


METHODS: dict[str, Callable[[keras.Model, float, Setting], keras.Model]] = {
    "masked": masked,
    "reconstruct_mean": reconstruction("mean"),
    "reconstruct": reconstruction("least_squares"),
    "finetune": finetune,
    "recover": recovery(False),
    "recover_distill": recovery(True),
    "gradual": gradual,
}


# --- ranking baselines --------------------------------------------------------------------


def build_dense_model(seed: int, input_dim: int, classes: int) -> keras.Model:
    """The benchmark architecture with Dense hidden layers (L2 `BASE_L2` on the kernels)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=(input_dim,), name="pixels")
    x = inputs
    for i, units in enumerate(HIDDEN_UNITS):
        x = keras.layers.Dense(
            units,
            activation="relu",
            kernel_regularizer=keras.regularizers.L2(BASE_L2),
            name=f"dense_{i}",
        )(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="classes")(x)
    return keras.Model(inputs, outputs, name="digits_dense")


def dense_as_spectral(dense: keras.Model) -> keras.Model:
    """The same function, with each hidden Dense layer written as a Spectral layer.

    `diag_start = 0`, `diag_end[j] = -||W[:, j]||` and `base[:, j] = W[:, j] / ||W[:, j]||`, so
    `kernel = base * (0 - diag_end) = W` and |eigenvalue| = the incoming-weight norm.
    """
    inputs = keras.Input(shape=dense.input_shape[1:], name="pixels")
    x = inputs
    for layer in dense.layers:
        if not isinstance(layer, keras.layers.Dense):
            continue
        if layer.name == "classes":
            head = keras.layers.Dense(layer.units, activation="softmax", name="classes")
            x = head(x)
            head.set_weights(layer.get_weights())
            continue
        kernel, bias = layer.get_weights()
        norms = np.linalg.norm(kernel, axis=0)
        safe = np.where(norms > 0, norms, 1.0)
        hidden = Spectral(layer.units, activation="relu", use_bias=True, name=layer.name)
        x = hidden(x)
        hidden.base.assign((kernel / safe).astype("float32"))
        hidden.diag_start.assign(np.zeros((kernel.shape[0], 1), dtype="float32"))
        hidden.diag_end.assign((-norms).reshape(1, -1).astype("float32"))
        hidden.bias.assign(bias)
    return keras.Model(inputs, x, name="dense_as_spectral")


def randomly_ranked(model: keras.Model, seed: int) -> keras.Model:
    """A copy of `model` whose eigenvalue magnitudes are shuffled within each Spectral layer.

    `base` is rescaled column by column so that every kernel, hence the function, is unchanged:
    only the ranking of the nodes becomes random.
    """
    rng = np.random.default_rng(10_000 + seed)
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    for layer in clone.layers:
        if not isinstance(layer, Spectral):
            continue
        start, end = layer.return_diag()
        kernel = layer.return_base() * (start - end)
        shuffled = np.sign(end) * rng.permutation(np.abs(end.reshape(-1))).reshape(end.shape)
        shuffled = np.where(shuffled == 0, 1e-6, shuffled)
        denominator = start - shuffled
        if np.min(np.abs(denominator)) < 1e-6:
            raise ValueError(f"{layer.name}: diag_start meets a shuffled eigenvalue")
        layer.base.assign((kernel / denominator).astype("float32"))
        layer.diag_end.assign(shuffled.astype("float32"))
    return clone


def same_function(a: keras.Model, b: keras.Model, x: np.ndarray, atol: float = 1e-5) -> float:
    """Largest output difference of two models on `x` (checks the baselines' rewrites)."""
    out_a = keras.ops.convert_to_numpy(a(x, training=False))
    out_b = keras.ops.convert_to_numpy(b(x, training=False))
    diff = float(np.max(np.abs(out_a - out_b)))
    if diff > atol:
        raise AssertionError(f"rewritten model differs from the original by {diff:g}")
    return diff
