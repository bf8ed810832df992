"""Tests for `spectral.recovery`: brief training of a pruned digits model, with labels, with a
teacher's soft targets, or both; optimizer ownership; cancellation between epochs."""

from __future__ import annotations

import keras
import numpy as np
import pytest

import spectral
from spectral.recovery import distillation_loss, recover
from tests.support.spectral import COMPILE

PERCENT = 90
EPOCHS = 3


def _accuracy(model: keras.Model, digits: tuple[np.ndarray, ...]) -> float:
    _, _, x_test, y_test = digits
    scores = keras.ops.convert_to_numpy(model(x_test, training=False))
    return float(np.mean(np.argmax(scores, axis=-1) == y_test))


def _assert_compiled_as_asked(model: keras.Model) -> None:
    # Cheaper than `evaluate` (no test function to trace); one test does evaluate.
    config = model.get_compile_config()
    assert config["loss"] == COMPILE["loss"]
    assert config["metrics"] == COMPILE["metrics"]


@pytest.fixture
def pruned(trained_model: keras.Model) -> keras.Model:
    """The shared trained model with 90 % of its nodes removed (a fresh copy per test)."""
    return spectral.prune_percentile(trained_model, PERCENT, COMPILE)


def test_training_on_labels_improves_accuracy(
    pruned: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train, y_train, x_test, y_test = digits
    before = _accuracy(pruned, digits)
    summary = recover(pruned, x=x_train, y=y_train, epochs=EPOCHS, compile_dictionary=COMPILE)
    after = _accuracy(pruned, digits)
    # Measured: about 0.10 before and 0.30 after 3 epochs from the plainly sliced model.
    assert after > before + 0.1
    assert summary["epochs"] == EPOCHS
    assert len(summary["history"]["loss"]) == EPOCHS
    assert summary["history"]["loss"][-1] < summary["history"]["loss"][0]
    assert summary["distill"] is False
    # Compiled with the user's loss and metrics afterwards: `evaluate` reports accuracy.
    results = pruned.evaluate(x_test, y_test, verbose=0, return_dict=True)
    assert results["accuracy"] == pytest.approx(after, abs=1e-6)


def test_distillation_without_labels(
    pruned: keras.Model, trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train = digits[0]
    before = _accuracy(pruned, digits)
    summary = recover(
        pruned,
        x=x_train,
        epochs=EPOCHS,
        compile_dictionary=COMPILE,
        teacher=trained_model,
        distill=True,
    )
    # The packed targets are no labels: only the loss is tracked while distilling.
    assert set(summary["history"]) == {"loss"}
    assert summary["history"]["loss"][-1] < summary["history"]["loss"][0]
    assert summary["distill"] is True
    assert _accuracy(pruned, digits) > before + 0.1
    _assert_compiled_as_asked(pruned)


def test_distillation_with_labels_and_optimizer_ownership(
    pruned: keras.Model, trained_model: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train, y_train, _, _ = digits
    schedule = keras.optimizers.schedules.ExponentialDecay(2e-3, decay_steps=10, decay_rate=0.9)
    optimizer = keras.optimizers.Adam(schedule)
    compile_dictionary = {**COMPILE, "optimizer": optimizer}
    before = _accuracy(pruned, digits)
    recover(
        pruned,
        x=x_train,
        y=y_train,
        epochs=EPOCHS,
        compile_dictionary=compile_dictionary,
        teacher=trained_model,
        distill=True,
        temperature=3.0,
        alpha=0.7,
    )
    assert _accuracy(pruned, digits) > before + 0.1
    # The caller's instance is never used: it stays unbuilt, and the model's own optimizer
    # keeps its class and learning-rate schedule.
    assert pruned.optimizer is not optimizer
    assert not optimizer.built
    assert isinstance(pruned.optimizer, keras.optimizers.Adam)
    assert pruned.optimizer.get_config()["learning_rate"] == optimizer.get_config()["learning_rate"]
    assert compile_dictionary["optimizer"] is optimizer
    # ... and it trained with the model: further `fit` calls work and continue its steps.
    steps = int(pruned.optimizer.iterations)
    assert steps == EPOCHS * int(np.ceil(len(x_train) / 64))
    pruned.fit(x_train[:64], y_train[:64], epochs=1, batch_size=64, verbose=0)
    assert int(pruned.optimizer.iterations) == steps + 1


def test_raising_progress_cancels_between_epochs(
    pruned: keras.Model, digits: tuple[np.ndarray, ...]
) -> None:
    x_train, y_train, _, _ = digits
    seen: list[tuple[float, str]] = []

    def progress(fraction: float, message: str) -> None:
        seen.append((fraction, message))
        if len(seen) == 2:
            raise RuntimeError("cancelled by the caller")

    with pytest.raises(RuntimeError, match="cancelled by the caller"):
        recover(
            pruned,
            x=x_train,
            y=y_train,
            epochs=5,
            batch_size=128,
            compile_dictionary=COMPILE,
            progress=progress,
        )
    assert [message.split(",")[0] for _, message in seen] == ["epoch 1/5", "epoch 2/5"]
    assert [fraction for fraction, _ in seen] == [0.2, 0.4]
    # Exactly two epochs of steps ran, and the model is left compiled for the user's metrics.
    assert int(pruned.optimizer.iterations) == 2 * int(np.ceil(len(x_train) / 128))
    _assert_compiled_as_asked(pruned)


def test_softmax_distillation_loss_is_tempered_kl() -> None:
    teacher = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], dtype="float32")
    student = np.array([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]], dtype="float32")
    temperature = 2.0

    def tempered(p: np.ndarray) -> np.ndarray:
        w = np.exp(np.log(p.astype(np.float64)) / temperature)
        return w / w.sum(axis=1, keepdims=True)

    loss = distillation_loss(None, 0, softmax=True, temperature=temperature, alpha=0.5)
    q_t, q_s = tempered(teacher), tempered(student)
    expected = np.sum(q_t * np.log(q_t / q_s), axis=1) * temperature**2
    got = keras.ops.convert_to_numpy(loss(q_t.astype("float32"), student))
    np.testing.assert_allclose(got, expected, rtol=1e-4)
    same = keras.ops.convert_to_numpy(loss(q_t.astype("float32"), teacher))
    np.testing.assert_allclose(same, 0.0, atol=1e-5)


def test_labels_and_soft_targets_are_mixed_by_alpha() -> None:
    labels = np.array([[0.0], [2.0]], dtype="float32")
    teacher = np.array([[0.5, -1.0], [2.0, 0.0]], dtype="float32")
    student = np.array([[0.0, 0.0], [1.0, 1.0]], dtype="float32")

    def label_loss(y_true: object, y_pred: object) -> object:
        # A stand-in whose value shows which columns it was given.
        return keras.ops.sum(y_true, axis=-1) + 0.0 * keras.ops.sum(y_pred, axis=-1)

    loss = distillation_loss(label_loss, 1, softmax=False, temperature=2.0, alpha=0.25)
    packed = np.concatenate([labels, teacher], axis=1)
    got = keras.ops.convert_to_numpy(loss(packed, student))
    mse = np.mean((student - teacher) ** 2, axis=1)
    np.testing.assert_allclose(got, 0.75 * labels[:, 0] + 0.25 * mse, rtol=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"epochs": 0}, "Received: epochs=0"),
        ({"batch_size": -1}, "Received: batch_size=-1"),
        ({"temperature": 0.0}, "Received: temperature=0.0"),
        ({"alpha": 1.5}, "Received: alpha=1.5"),
        ({"y": None}, "Received: y=None, distill=False"),
        ({"distill": True}, "Received: teacher=None"),
    ],
)
def test_invalid_arguments(
    pruned: keras.Model,
    digits: tuple[np.ndarray, ...],
    kwargs: dict[str, object],
    message: str,
) -> None:
    x_train, y_train, _, _ = digits
    arguments: dict[str, object] = {"y": y_train, "epochs": 1, "compile_dictionary": COMPILE}
    with pytest.raises(ValueError, match=message):
        recover(pruned, x=x_train, **{**arguments, **kwargs})  # type: ignore[arg-type]


def test_uncompiled_model_without_compile_dictionary_is_refused(
    digits: tuple[np.ndarray, ...],
) -> None:
    uncompiled = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10)])
    with pytest.raises(ValueError, match="compile_dictionary=None"):
        recover(uncompiled, x=digits[0], y=digits[1], epochs=1)
