"""HTTP service: model registry, versioned predictions and pruning jobs."""
