"""MLServer runtime for the serving benchmark: a `.keras` file, `predict_on_batch` per batch.

MLServer loads it by import path (``runtime.KerasRuntime`` in model-settings.json), in its own
virtual environment (``bench/.venvs/mlserver``); ``spectral`` comes from the repository root on
``PYTHONPATH`` so that the Spectral layer deserializes.
"""

from __future__ import annotations

import keras
import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

import spectral  # noqa: F401  (registers the Spectral layer for deserialization)


class KerasRuntime(MLModel):  # type: ignore[misc]
    async def load(self) -> bool:
        uri = self.settings.parameters.uri
        self._model = keras.saving.load_model(uri, compile=False)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        rows = NumpyCodec.decode_input(payload.inputs[0]).astype("float32", copy=False)
        outputs = np.asarray(self._model.predict_on_batch(rows))
        return InferenceResponse(
            model_name=self.name,
            outputs=[NumpyCodec.encode_output("output_0", outputs)],
        )
