"""Mini-batches of :class:`SiteTensors` as dicts of torch tensors.

Every batch is a pure function of (tensors, batch size, seed, step or epoch), so a resumed run, or a
Flower client rebuilt each round, draws exactly the same batches. ``pos`` is a contiguous (B, T) tensor
because Opacus needs every input batch-first.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from clin_jepa.data.tokenize import SiteTensors
from clin_jepa.errors import DataValidationError

Batch = dict[str, torch.Tensor]


def batch_from_indices(tensors: SiteTensors, index: np.ndarray) -> Batch:
    """Rows ``index`` of ``tensors`` as a batch (B may be 0)."""
    index = np.asarray(index, dtype=np.int64)
    b, t = len(index), tensors.hours
    return {
        "bins": torch.from_numpy(tensors.bins[index].astype(np.int64)),
        "treat": torch.from_numpy(np.ascontiguousarray(tensors.treat[index], dtype=np.float32)),
        "time": torch.from_numpy(np.ascontiguousarray(tensors.time[index], dtype=np.float32)),
        "mask": torch.from_numpy(np.ascontiguousarray(tensors.mask[index])),
        "pos": torch.arange(t, dtype=torch.long).expand(b, t).contiguous(),
        "labels": torch.from_numpy(np.ascontiguousarray(tensors.labels[index], dtype=np.float32)),
    }


def make_loader(tensors: SiteTensors, batch_size: int, seed: int, shuffle: bool = True,
                poisson: bool = False, epoch: int = 0) -> Iterator[Batch]:
    """One pass over ``tensors``.

    Default: ``ceil(N / batch_size)`` batches of a seeded permutation (the last may be smaller).
    ``poisson=True`` (DP-SGD sampling): ``N // batch_size`` batches, each row joining each batch
    independently with probability ``batch_size / N``, so batches vary in size and may be empty.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(tensors)
    rng = np.random.default_rng([seed, epoch])
    if poisson:
        q = min(1.0, batch_size / max(n, 1))
        for _ in range(max(1, n // batch_size)):
            yield batch_from_indices(tensors, np.flatnonzero(rng.random(n) < q))
        return
    order = rng.permutation(n) if shuffle else np.arange(n)
    for lo in range(0, n, batch_size):
        yield batch_from_indices(tensors, order[lo:lo + batch_size])


def batch_indices_at(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Rows of the batch at global ``step``: ``min(batch_size, n)`` distinct rows, a pure function."""
    rng = np.random.default_rng([seed, step])
    return np.sort(rng.choice(n, size=min(batch_size, n), replace=False))


def infinite_batches(tensors: SiteTensors, batch_size: int, seed: int,
                     start_step: int = 0) -> Iterator[Batch]:
    """Batches for steps ``start_step, start_step + 1, ...``; batch ``s`` depends only on (seed, s)."""
    if len(tensors) == 0:
        raise DataValidationError(f"site {tensors.site}", [
            "no eligible ICU stays (>= 24 h, alive at 24 h) to train on; run `clin-jepa validate` on its "
            "site config to see how many stays the icu_stay codes find"])
    step = start_step
    while True:
        yield batch_from_indices(tensors, batch_indices_at(len(tensors), batch_size, seed, step))
        step += 1
