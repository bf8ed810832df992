"""Spectral training and physical pruning of fully connected Keras 3 networks."""

from spectral.graph import spectral_layers
from spectral.layer import Spectral
from spectral.pipeline import eigenvalue_pretraining
from spectral.plots import plot_eigenvalues, plot_metric_curve, plot_report
from spectral.pruning import metric_based_pruning, prune, prune_percentile
from spectral.report import PruningReport, PruningResult
from spectral.rules import (
    ConsumerRule,
    DenseRule,
    FeatureWiseRule,
    LinearRule,
    PassThroughRule,
    register_consumer_rule,
)

__all__ = [
    "ConsumerRule",
    "DenseRule",
    "FeatureWiseRule",
    "LinearRule",
    "PassThroughRule",
    "PruningReport",
    "PruningResult",
    "Spectral",
    "eigenvalue_pretraining",
    "metric_based_pruning",
    "plot_eigenvalues",
    "plot_metric_curve",
    "plot_report",
    "prune",
    "prune_percentile",
    "register_consumer_rule",
    "spectral_layers",
]
