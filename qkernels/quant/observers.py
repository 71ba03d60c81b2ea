"""Calibration observers: activation statistics over calibration batches, per input channel.

Each observer takes batches of a layer's inputs x [..., K] (NumPy arrays or CPU torch tensors) in
``update`` and answers two questions: ``channel_absmax()`` (float32 [K], one clipping value per input
channel) and ``tensor_absmax()`` (a float, one clipping value for the whole tensor). What the
clipping value is depends on the observer: the running maximum of |x|, a percentile of |x|, or the
clip that minimises the quantization MSE. SmoothQuant's smoothing factors and the choice of a
static activation range (for a clip-then-quantize activation path) are made from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InvalidArgumentError
from ._common import check_bits, check_count, rows_of


class _Observer:
    def __init__(self):
        self.K: int | None = None
        self.count = 0  # rows (tokens) seen

    def update(self, x: Any) -> None:
        """Add a batch of layer inputs x [..., K]; K must stay the same across batches."""
        rows = rows_of(x, "x", self.K)
        if rows.shape[0] == 0:
            return
        self.K = rows.shape[1]
        self.count += rows.shape[0]
        self._add(np.abs(rows).astype(np.float32))

    def _require_data(self) -> None:
        if not self.count:
            raise InvalidArgumentError(f"{type(self).__name__} has seen no data: call update() first")


class AbsMaxObserver(_Observer):
    """Running max|x| per input channel over every row of every batch (the statistic SmoothQuant,
    Xiao et al. 2022, arXiv:2211.10438, calibrates with). Memory: K floats.

    channel_absmax()[k] = max over all rows of |x[:, k]|; tensor_absmax() = the max over channels.
    """

    def __init__(self):
        super().__init__()
        self._absmax = None

    def _add(self, a):
        batch = a.max(axis=0)
        self._absmax = batch if self._absmax is None else np.maximum(self._absmax, batch)

    def channel_absmax(self) -> np.ndarray:
        self._require_data()
        return self._absmax.copy()

    def tensor_absmax(self) -> float:
        self._require_data()
        return float(self._absmax.max())


class AbsMaxSampleObserver(AbsMaxObserver):
    """AbsMaxObserver that also keeps a sample of the input rows themselves (signed): every
    `every`-th row, at most `max_rows` of them (4·max_rows·K bytes), for searches that score a
    quantized layer's output on calibration inputs (SmoothQuant's α search). ``rows()``: float32 [R, K]."""

    def __init__(self, every: int = 4, max_rows: int = 512):
        super().__init__()
        check_count(every, "every")
        check_count(max_rows, "max_rows")
        self.every, self.max_rows = every, max_rows
        self._rows: list[np.ndarray] = []
        self._kept = 0

    def update(self, x: Any) -> None:
        rows = rows_of(x, "x", self.K)
        super().update(rows)
        # rows seen before this batch decide the phase, so that the sample is every `every`-th row overall
        first = (-(self.count - rows.shape[0])) % self.every
        sample = rows[first :: self.every][: self.max_rows - self._kept].astype(np.float32)
        if len(sample):
            self._rows.append(sample)
            self._kept += len(sample)

    def rows(self) -> np.ndarray:
        self._require_data()
        if len(self._rows) > 1:
            self._rows = [np.concatenate(self._rows)]
        return self._rows[0]


class _SampleObserver(_Observer):
    """Keeps every |x| seen (float32, 4·rows·K bytes): the statistics below are exact over all of it."""

    def __init__(self):
        super().__init__()
        self._batches: list[np.ndarray] = []

    def _add(self, a):
        self._batches.append(a)

    def _samples(self) -> np.ndarray:
        self._require_data()
        if len(self._batches) > 1:
            self._batches = [np.concatenate(self._batches)]
        return self._batches[0]


class PercentileObserver(_SampleObserver):
    """The `percentile`-th percentile of |x| (NumPy's linear interpolation), exact over every row
    seen: a clip that ignores the rarest outliers (as in percentile calibration, e.g. Wu et al. 2020,
    arXiv:2004.09602, §4). Memory: all samples (4·rows·K bytes).

    channel_absmax()[k]: the percentile of |x[:, k]| over all rows; tensor_absmax(): the percentile
    of |x| over all elements.
    """

    def __init__(self, percentile: float = 99.99):
        super().__init__()
        if not 0 <= percentile <= 100:
            raise InvalidArgumentError(f"percentile={percentile} must lie in [0, 100]")
        self.percentile = float(percentile)

    def channel_absmax(self) -> np.ndarray:
        return np.percentile(self._samples(), self.percentile, axis=0).astype(np.float32)

    def tensor_absmax(self) -> float:
        return float(np.percentile(self._samples(), self.percentile))


class MSEObserver(_SampleObserver):
    """The clip c minimising the squared error of symmetric `bits`-bit quantization with clipping,
    Σ (x − Q_c(x))² with Q_c(x) = s · clamp(rne(x / s), ±(2^(b−1) − 1)), s = c / (2^(b−1) − 1)
    (MSE-optimal clipping, as in Banner et al. 2019, arXiv:1810.05723, solved by search here).

    The search tries c = max|x| · i / grid for i = 1..grid and keeps the best (the largest on ties),
    over every row seen. Memory: all samples; time: grid passes over them.
    channel_absmax()[k]: the best clip for channel k alone; tensor_absmax(): the best single clip.
    """

    def __init__(self, bits: int = 8, grid: int = 100):
        super().__init__()
        check_bits(bits)
        check_count(grid, "grid")
        self.bits, self.grid = bits, grid

    def _best_clip(self, a: np.ndarray, axis) -> np.ndarray:
        qmax = (1 << (self.bits - 1)) - 1
        a = a.astype(np.float64)
        amax = a.max(axis=axis)
        best_clip, best_error = amax, None
        for i in range(self.grid, 0, -1):  # from the full range down: strict < keeps the largest on ties
            clip = amax * (i / self.grid)
            s = np.where(clip > 0, clip / qmax, 1.0)
            error = ((a - np.minimum(np.rint(a / s), qmax) * s) ** 2).sum(axis=axis)
            if best_error is None:
                best_error = error
                continue
            better = error < best_error
            best_clip, best_error = np.where(better, clip, best_clip), np.where(better, error, best_error)
        return best_clip

    def channel_absmax(self) -> np.ndarray:
        return self._best_clip(self._samples(), 0).astype(np.float32)

    def tensor_absmax(self) -> float:
        return float(self._best_clip(self._samples(), None))
