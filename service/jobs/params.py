"""Typed job parameters: `PruneParams` (how to prune) and `PruneRequest` (which model, how).

The API validates a request once with these classes; the job row stores
`PruneParams.recorded()`, and the worker reads it back into the same class. So every default is
written here and only here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from service.errors import CompileConfigMissing
from service.model_loading import COMPILE_KEYS

Method = Literal["percentile", "metric", "pretrain"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
# Versions are PostgreSQL INTEGERs; the wire format states the bound so no larger number reaches
# the database.
MAX_VERSION = 2**31 - 1
Scope = Literal["global", "layer"]
Reconstruct = Literal["least_squares", "mean"]
_COMPILE_EXAMPLE = (
    '{"optimizer": "adam", "loss": "sparse_categorical_crossentropy", "metrics": ["accuracy"]}'
)


class PromoteSpec(BaseModel):
    """The promotion gate of a job: move ``alias`` to the new version only if ``metric``, on the
    job's dataset, dropped by at most ``max_drop_percent`` from the parent version's.

    The drop is in percentage points for metrics in [0, 1] where higher is better (accuracy:
    0.95 -> 0.94 is a drop of 1.0), and the relative change in percent otherwise (for ``loss``,
    its relative increase).
    """

    model_config = ConfigDict(extra="forbid")

    alias: str = Field(min_length=1, max_length=100, description="The alias to move (a slug).")
    max_drop_percent: float = Field(
        ge=0, le=100, description="The largest drop of the metric that still promotes."
    )
    metric: str = Field(
        default="accuracy",
        min_length=1,
        max_length=200,
        description='One of the model\'s compiled metrics, or "loss".',
    )


class PruneParams(BaseModel):
    """The method of a pruning job and its parameters."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    method: Method = Field(default="percentile", description="percentile | metric | pretrain.")
    percentile: float | None = Field(
        default=None,
        ge=0,
        le=100,
        description="Remove nodes whose |eigenvalue| is below this percentile. Required for "
        "method=percentile; for pretrain, omit it to search by metric.",
    )
    compare_metric: str = Field(default="accuracy", description="Metric the search keeps.")
    higher_is_better: bool | None = Field(
        default=None,
        description="Direction of compare_metric; default inferred from its name (loss, "
        "errors, crossentropies, false positives/negatives are lower-is-better).",
    )
    max_delta_percent: float = Field(
        default=10.0, ge=0, le=100, description="Allowed relative metric loss, in percent."
    )
    percentile_step: float = Field(
        default=5.0, gt=0, le=100, description="Step of the metric-based search."
    )
    epochs: int = Field(default=5, ge=1, le=10_000, description="Eigenvalue pretraining epochs.")
    fine_tune_epochs: int | None = Field(
        default=None, ge=1, le=10_000, description="Fine-tune epochs; default `epochs`."
    )
    eigenvalues_only: bool = Field(
        default=False,
        description="pretrain: train only the eigenvalues in phase 1 (biases and non-Spectral "
        "layers frozen too); default freezes only the Spectral bases.",
    )
    batch_size: int = Field(default=32, ge=1, le=65_536, description="Batch size.")
    scope: Scope | None = Field(
        default=None,
        description='Percentile scope: one cutoff over all layers ("global") or one per layer '
        '("layer"). Default: "layer" for pretrain, "global" otherwise.',
    )
    min_units: int = Field(default=1, ge=1, le=1_000_000, description="Fewest nodes a layer keeps.")
    dataset_id: str | None = Field(
        default=None,
        description="Dataset from POST /datasets: required for metric and pretrain; for "
        "percentile it adds the metric before/after.",
    )
    compile: dict[str, Any] | None = Field(
        default=None,
        description="model.compile keyword arguments; default the artifact's own compile config.",
    )
    reconstruct: Reconstruct | None = Field(
        default=None,
        description="Re-fit each consumer of removed nodes on calibration rows to reproduce the "
        'unpruned pre-activations: "least_squares" or "mean". Default: exact folding only.',
    )
    calibration_dataset: str | None = Field(
        default=None,
        description="Dataset whose x calibrates the reconstruction; default dataset_id's.",
    )
    recover_epochs: int | None = Field(
        default=None,
        ge=1,
        le=10_000,
        description="Train the compact model this many epochs after pruning (recovery).",
    )
    recover_dataset: str | None = Field(
        default=None,
        description="Dataset the recovery trains on; default dataset_id. With distill, its y "
        "may be anything: the unpruned model's outputs are the soft targets.",
    )
    distill: bool = Field(
        default=False,
        description="Recovery also trains on the unpruned model's outputs (needs recover_epochs).",
    )
    temperature: float = Field(
        default=2.0, gt=0, le=100, description="Distillation temperature (with distill)."
    )
    steps: int = Field(
        default=1,
        ge=1,
        le=20,
        description="Remove the nodes in this many rounds, with reconstruction and recovery "
        "after each (gradual pruning).",
    )

    promote: PromoteSpec | None = Field(
        default=None,
        description="On success, move this alias to the new version if the metric on "
        "dataset_id dropped by at most max_drop_percent (needs dataset_id).",
    )

    @model_validator(mode="after")
    def _check_method(self) -> PruneParams:
        if self.method == "percentile" and self.percentile is None:
            raise ValueError("method=percentile needs a percentile between 0 and 100")
        if self.method in ("metric", "pretrain") and self.dataset_id is None:
            raise ValueError(f"method={self.method} needs a dataset_id (upload via POST /datasets)")
        if self.scope is None:
            self.scope = "layer" if self.method == "pretrain" else "global"
        if self.compile is not None:
            unknown = sorted(set(self.compile) - COMPILE_KEYS)
            if unknown:
                raise ValueError(
                    f"compile accepts only {sorted(COMPILE_KEYS)}. Received keys: {unknown}"
                )
        self._check_compression()
        return self

    def _check_compression(self) -> None:
        # Defaults that depend on other fields are filled in here, once, so the recorded
        # parameters say which dataset each step used.
        # Every method takes them; pretrain applies them when it prunes, before fine-tuning.
        if self.reconstruct is None and self.calibration_dataset is not None:
            raise ValueError(
                "calibration_dataset is only used by reconstruct: set reconstruct to "
                '"least_squares" or "mean"'
            )
        if self.reconstruct is not None:
            self.calibration_dataset = self.calibration_dataset or self.dataset_id
            if self.calibration_dataset is None:
                raise ValueError(
                    f"reconstruct={self.reconstruct} re-fits layers on calibration rows: pass "
                    "calibration_dataset or dataset_id (upload via POST /datasets)"
                )
        if self.recover_epochs is None and self.recover_dataset is not None:
            raise ValueError("recover_dataset is only used by recovery: set recover_epochs")
        if self.recover_epochs is not None:
            self.recover_dataset = self.recover_dataset or self.dataset_id
            if self.recover_dataset is None:
                raise ValueError(
                    "recover_epochs trains the pruned model: pass recover_dataset or "
                    "dataset_id (upload via POST /datasets)"
                )
        if self.distill and self.recover_epochs is None:
            raise ValueError("distill trains on the unpruned model's outputs: set recover_epochs")
        if "temperature" in self.model_fields_set and not self.distill:
            raise ValueError("temperature is only used by distill: set distill=true")

    @property
    def searches(self) -> bool:
        """Whether the job searches the percentile by metric instead of being given one."""
        return self.method == "metric" or self.percentile is None

    def recorded(self) -> dict[str, Any]:
        """The parameters this method uses, as stored in the job and the new version's lineage."""
        unused: set[str] = set()
        if not self.searches:
            unused |= {"max_delta_percent", "percentile_step"}
        if self.method != "pretrain":
            unused |= {"epochs", "fine_tune_epochs", "eigenvalues_only"}
        if self.dataset_id is None:
            unused |= {"compare_metric", "higher_is_better"}
        if not self.distill:
            unused |= {"distill", "temperature"}
        if self.steps == 1:
            unused.add("steps")
        return self.model_dump(exclude=unused, exclude_none=True)

    @property
    def dataset_ids(self) -> list[str]:
        """Every dataset the job reads, each once."""
        ids = (self.dataset_id, self.calibration_dataset, self.recover_dataset)
        return list(dict.fromkeys(i for i in ids if i is not None))

    def compile_for(self, saved: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
        """The ``model.compile`` kwargs the job uses: ``compile``, else the version's own.

        Args:
            saved: The compile config recorded for the model version (None when uncompiled).
            what: The model version, as error messages name it.

        Raises:
            CompileConfigMissing: a dataset must be evaluated, or the model trained, and
                nothing says how to compile.
        """
        config = self.compile or saved
        if config is None and (self.dataset_id is not None or self.recover_epochs is not None):
            raise CompileConfigMissing(
                f"{what} was saved without a compile config, so the dataset cannot be "
                f"evaluated or trained on: pass `compile`, e.g. {_COMPILE_EXAMPLE}"
            )
        return config


class PruneRequest(PruneParams):
    """Body of ``POST /prune``: the model version to prune, and how."""

    model_id: str = Field(min_length=1, description="Model to prune.")
    version: int | None = Field(
        default=None, ge=1, le=MAX_VERSION, description="Version; default the latest."
    )
    alias: str | None = Field(default=None, description="Alias to resolve instead of a version.")

    @model_validator(mode="after")
    def _check_target(self) -> PruneRequest:
        if self.version is not None and self.alias is not None:
            raise ValueError("give either version or alias, not both")
        return self

    def params(self) -> PruneParams:
        """The pruning parameters, without the model reference."""
        # Only what was set: the checks that look at which fields a client gave see the same.
        fields = self.model_dump(exclude={"model_id", "version", "alias"}, exclude_unset=True)
        return PruneParams.model_validate(fields)

    def fingerprint(self) -> str:
        """Stable hash of the request, to tell a retried request from a different one."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()
