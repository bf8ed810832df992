"""Rows of data the library runs models on itself: calibration and recovery inputs.

Reconstruction and recovery both take inputs the way Keras does (an array, or a list/dict of
arrays for several model inputs) and walk them in chunks. This module owns counting those rows
and slicing them.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np


def count_rows(x: Any) -> int:
    """Rows of an array, or of the first array of a list/dict of arrays (0 when there is none)."""
    leaves = keras.tree.flatten(x)
    if not leaves or np.ndim(leaves[0]) == 0:
        return 0
    return int(np.shape(leaves[0])[0])


def slice_rows(x: Any, start: int, stop: int) -> Any:
    """Rows `start:stop` of every array in `x`."""
    return keras.tree.map_structure(lambda a: a[start:stop], x)
