"""Compiling the models the library builds, each with an optimizer of its own.

A Keras optimizer is built for the variables of the first model it trains and refuses any other
model's variables afterwards. So a `compile_dictionary` holding an optimizer instance must never
hand that instance itself to a model the library creates: every compile gets a fresh instance
built from the given one's config (its learning-rate schedule included), which also leaves the
caller's instance usable with the caller's own model.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import keras


def fresh_optimizer(optimizer: Any) -> Any:
    """A new optimizer with `optimizer`'s config; identifiers (strings, dicts) are returned as is.

    Args:
        optimizer: A `keras.optimizers.Optimizer`, or anything `keras.optimizers.get` accepts.

    Returns:
        An unbuilt optimizer of the same class and config (learning-rate schedule included),
        or `optimizer` itself when it is not an optimizer instance.
    """
    if isinstance(optimizer, keras.optimizers.Optimizer):
        return optimizer.__class__.from_config(optimizer.get_config())
    return optimizer


def compile_arguments(compile_dictionary: Mapping[str, Any]) -> dict[str, Any]:
    """`compile_dictionary` as keyword arguments of `compile`, with a fresh optimizer."""
    arguments = dict(compile_dictionary)
    if "optimizer" in arguments:
        arguments["optimizer"] = fresh_optimizer(arguments["optimizer"])
    return arguments


def compile_model(
    target: keras.Model,
    source: keras.Model,
    compile_dictionary: Mapping[str, Any] | None,
    required: bool,
) -> bool:
    """Compiles `target` with `compile_dictionary`, else like `source` if that is compiled.

    Either way `target` gets an optimizer of its own (see the module docstring).

    Returns:
        Whether `target` was compiled.

    Raises:
        ValueError: If `required` and there is nothing to compile with.
    """
    if compile_dictionary is not None:
        target.compile(**compile_arguments(compile_dictionary))
        return True
    config = source.get_compile_config() if getattr(source, "compiled", False) else None
    if config:
        # The config is serialized, so this builds a new optimizer from it.
        target.compile_from_config(config)
        return True
    if required:
        raise ValueError(
            "Evaluating needs a compiled model: pass `compile_dictionary` (keyword arguments "
            "of `model.compile`) or compile the model first. Received: compile_dictionary=None"
        )
    return False
