"""Pruning jobs, without HTTP or Celery: the parameters, the table, submission, the states.

- `params`: `PruneParams` / `PruneRequest`, validated once, with the one set of defaults;
- `table`: the `Job` row and reads of it;
- `submission`: `submit_job(registry, request, enqueue=...)`, what ``POST /prune`` calls;
- `state`: the state machine the worker drives (claim, progress, heartbeat, finish, recover).
"""
