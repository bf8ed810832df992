"""Celery workers that run pruning jobs."""
