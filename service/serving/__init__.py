"""The one predict core behind every serving protocol (native JSON, Open Inference V2, TF Serving).

Front ends (``service/api/routes/``) decode their wire format into numpy arrays, call
`PredictCore`, and encode its `Prediction`. Validation, version resolution, batching, metrics
and the loaded models live here, once.
"""

from service.serving.core import PredictCore, Prediction, ServingSignature, TensorSpec

__all__ = ["PredictCore", "Prediction", "ServingSignature", "TensorSpec"]
