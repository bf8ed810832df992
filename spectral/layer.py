"""The `Spectral` layer: a fully connected layer parametrised in its eigen (dual) space.

Pruning, masking and compaction live in their own modules; this one only owns the layer.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import activations, constraints, initializers, ops, regularizers


def to_numpy(value: Any) -> np.ndarray:
    """Returns a variable's or tensor's value as a new numpy array."""
    return np.array(ops.convert_to_numpy(value))


def _resolve(get: Any, name: str, value: Any) -> Any:
    """Resolves an identifier with a Keras `get`, naming the argument when it is invalid."""
    try:
        return get(value)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"Argument `{name}` could not be interpreted ({exc}). Received: {name}={value!r}"
        ) from exc


@keras.saving.register_keras_serializable(package="spectral")
class Spectral(keras.layers.Layer):
    """Fully connected layer trained in the spectral domain.

    The layer computes `activation(dot(inputs, kernel) + bias)` like `Dense`, but its kernel
    is built from the eigen-decomposition of the layer's adjacency matrix:
    `kernel = base * (diag_start - diag_end)`, where `base` (input_dim x units) holds the
    non-trivial eigenvector components, `diag_start` (input_dim x 1) the eigenvalues of the
    input nodes and `diag_end` (1 x units) one eigenvalue per output node. The magnitude of
    a node's `diag_end` eigenvalue ranks its importance, which is what spectral pruning uses.

    Args:
        units: Positive integer, number of output nodes.
        activation: Activation function (name or callable). `None` means linear.
        is_base_trainable: Whether the eigenvectors (`base`) are trained.
        is_diag_start_trainable: Whether the input-node eigenvalues are trained.
            `is_input_layer` is accepted as an alias (the original package's name).
        is_diag_end_trainable: Whether the output-node eigenvalues are trained.
        use_bias: Whether the layer adds a bias vector.
        base_initializer: Initializer for `base`.
        diag_start_initializer: Initializer for `diag_start`.
        diag_end_initializer: Initializer for `diag_end`.
        bias_initializer: Initializer for `bias`.
        base_regularizer: Regularizer for `base`.
        diag_regularizer: Regularizer for both eigenvalue vectors. The string `"l2"` means
            `keras.regularizers.L2(diag_regularizer_param)`.
        diag_regularizer_param: L2 factor used when `diag_regularizer="l2"`.
        bias_regularizer: Regularizer for `bias`.
        activity_regularizer: Regularizer for the layer output.
        base_constraint: Constraint for `base`.
        diag_constraint: Constraint for both eigenvalue vectors.
        bias_constraint: Constraint for `bias`.
        **kwargs: Base layer keyword arguments, such as `name` and `dtype`.

    Input shape:
        N-D tensor with shape `(batch_size, ..., input_dim)`.

    Output shape:
        N-D tensor with shape `(batch_size, ..., units)`.

    Example:

    >>> layer = Spectral(4, activation="relu")
    >>> layer(np.ones((2, 3))).shape
    (2, 4)
    """

    def __init__(
        self,
        units: int,
        activation: Any = None,
        is_base_trainable: bool = True,
        is_diag_start_trainable: bool = False,
        is_diag_end_trainable: bool = True,
        use_bias: bool = False,
        base_initializer: Any = "glorot_uniform",
        diag_start_initializer: Any = "zeros",
        diag_end_initializer: Any = "ones",
        bias_initializer: Any = "zeros",
        base_regularizer: Any = None,
        diag_regularizer: Any = None,
        diag_regularizer_param: float = 5e-4,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        base_constraint: Any = None,
        diag_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ) -> None:
        if "is_input_layer" in kwargs:
            is_diag_start_trainable = kwargs.pop("is_input_layer")
            if not isinstance(is_diag_start_trainable, bool | np.bool_):
                raise ValueError(
                    "Argument `is_input_layer` must be a boolean. "
                    f"Received: is_input_layer={is_diag_start_trainable}"
                )
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        if isinstance(units, bool) or not isinstance(units, int | np.integer) or units <= 0:
            raise ValueError(
                f"Argument `units` must be a positive integer. Received: units={units}"
            )
        if isinstance(diag_regularizer_param, bool) or not isinstance(
            diag_regularizer_param, int | float
        ):
            raise ValueError(
                "Argument `diag_regularizer_param` must be a number. "
                f"Received: diag_regularizer_param={diag_regularizer_param}"
            )
        if diag_regularizer_param < 0:
            raise ValueError(
                "Argument `diag_regularizer_param` must be non-negative. "
                f"Received: diag_regularizer_param={diag_regularizer_param}"
            )
        for flag_name, flag in (
            ("is_base_trainable", is_base_trainable),
            ("is_diag_start_trainable", is_diag_start_trainable),
            ("is_diag_end_trainable", is_diag_end_trainable),
            ("use_bias", use_bias),
        ):
            if not isinstance(flag, bool | np.bool_):
                raise ValueError(
                    f"Argument `{flag_name}` must be a boolean. Received: {flag_name}={flag}"
                )
        self.units = int(units)
        self.activation = _resolve(activations.get, "activation", activation)
        self.is_base_trainable = bool(is_base_trainable)
        self.is_diag_start_trainable = bool(is_diag_start_trainable)
        self.is_diag_end_trainable = bool(is_diag_end_trainable)
        self.use_bias = bool(use_bias)
        self.base_initializer = _resolve(initializers.get, "base_initializer", base_initializer)
        self.diag_start_initializer = _resolve(
            initializers.get, "diag_start_initializer", diag_start_initializer
        )
        self.diag_end_initializer = _resolve(
            initializers.get, "diag_end_initializer", diag_end_initializer
        )
        self.bias_initializer = _resolve(initializers.get, "bias_initializer", bias_initializer)
        self.diag_regularizer_param = float(diag_regularizer_param)
        self.base_regularizer = _resolve(regularizers.get, "base_regularizer", base_regularizer)
        if isinstance(diag_regularizer, str) and diag_regularizer.lower() == "l2":
            self.diag_regularizer = regularizers.L2(self.diag_regularizer_param)
        else:
            self.diag_regularizer = _resolve(regularizers.get, "diag_regularizer", diag_regularizer)
        self.bias_regularizer = _resolve(regularizers.get, "bias_regularizer", bias_regularizer)
        self.base_constraint = _resolve(constraints.get, "base_constraint", base_constraint)
        self.diag_constraint = _resolve(constraints.get, "diag_constraint", diag_constraint)
        self.bias_constraint = _resolve(constraints.get, "bias_constraint", bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.supports_masking = True

    def build(self, input_shape: tuple[int | None, ...]) -> None:
        input_dim = input_shape[-1]
        if input_dim is None:
            raise ValueError(
                "The last dimension of the input to `Spectral` must be defined. "
                f"Received: input_shape={input_shape}"
            )
        self.base = self.add_weight(
            name="base",
            shape=(input_dim, self.units),
            initializer=self.base_initializer,
            regularizer=self.base_regularizer,
            constraint=self.base_constraint,
            trainable=self.is_base_trainable,
        )
        self.diag_start = self.add_weight(
            name="diag_start",
            shape=(input_dim, 1),
            initializer=self.diag_start_initializer,
            regularizer=self.diag_regularizer,
            constraint=self.diag_constraint,
            trainable=self.is_diag_start_trainable,
        )
        self.diag_end = self.add_weight(
            name="diag_end",
            shape=(1, self.units),
            initializer=self.diag_end_initializer,
            regularizer=self.diag_regularizer,
            constraint=self.diag_constraint,
            trainable=self.is_diag_end_trainable,
        )
        if self.use_bias:
            self.bias = self.add_weight(
                name="bias",
                shape=(self.units,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
        else:
            self.bias = None
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={-1: input_dim})
        self.built = True

    @property
    def kernel(self) -> Any:
        """The effective `(input_dim, units)` kernel, `base * (diag_start - diag_end)`."""
        return ops.multiply(self.base, ops.subtract(self.diag_start, self.diag_end))

    def call(self, inputs: Any) -> Any:
        outputs = ops.matmul(inputs, self.kernel)
        if self.bias is not None:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (*tuple(input_shape)[:-1], self.units)

    def direct_space(self) -> np.ndarray:
        """Returns the kernel in direct space, transposed to `(units, input_dim)`."""
        return to_numpy(self.kernel).T

    def return_base(self) -> np.ndarray:
        """Returns the eigenvector components `base` as a numpy array `(input_dim, units)`."""
        return to_numpy(self.base)

    def return_diag(self) -> tuple[np.ndarray, np.ndarray]:
        """Returns `(diag_start, diag_end)` as numpy arrays."""
        return to_numpy(self.diag_start), to_numpy(self.diag_end)

    @property
    def eigenvalues(self) -> np.ndarray:
        """The output-node eigenvalues `diag_end`, as a numpy array of shape `(units,)`."""
        return to_numpy(self.diag_end).reshape(-1)

    def get_config(self) -> dict[str, Any]:
        base_config = super().get_config()
        config = {
            "units": self.units,
            "activation": activations.serialize(self.activation),
            "is_base_trainable": self.is_base_trainable,
            "is_diag_start_trainable": self.is_diag_start_trainable,
            "is_diag_end_trainable": self.is_diag_end_trainable,
            "use_bias": self.use_bias,
            "base_initializer": initializers.serialize(self.base_initializer),
            "diag_start_initializer": initializers.serialize(self.diag_start_initializer),
            "diag_end_initializer": initializers.serialize(self.diag_end_initializer),
            "bias_initializer": initializers.serialize(self.bias_initializer),
            "base_regularizer": regularizers.serialize(self.base_regularizer),
            "diag_regularizer": regularizers.serialize(self.diag_regularizer),
            "diag_regularizer_param": self.diag_regularizer_param,
            "bias_regularizer": regularizers.serialize(self.bias_regularizer),
            "activity_regularizer": regularizers.serialize(self.activity_regularizer),
            "base_constraint": constraints.serialize(self.base_constraint),
            "diag_constraint": constraints.serialize(self.diag_constraint),
            "bias_constraint": constraints.serialize(self.bias_constraint),
        }
        return {**base_config, **config}
