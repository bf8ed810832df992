"""Bounded path and query parameters: every integer a client sends has a documented range.

The bounds are the database's: versions fit PostgreSQL's INTEGER (`service.versions.MAX_VERSION`),
offsets the same, so no client number reaches SQL as an overflow.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from service.versions import MAX_VERSION

VersionPath = Annotated[
    int, Path(ge=1, le=MAX_VERSION, description=f"Version number, 1 to {MAX_VERSION}.")
]
LimitQuery = Annotated[int, Query(ge=1, le=1000, description="Most items to return.")]
OffsetQuery = Annotated[
    int, Query(ge=0, le=MAX_VERSION, description="Items to skip, newest first.")
]
IdPath = Annotated[str, Path(min_length=1, max_length=200)]
