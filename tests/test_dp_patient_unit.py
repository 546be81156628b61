"""The DP unit is the patient: a patient with ten ICU stays is exposed to a DP-SGD step exactly as often
as a patient with one, and never twice in one batch (``clin_jepa.privacy.sampling``)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_privacy import _tensors

from clin_jepa.privacy import poisson_batches, sample_rate
from clin_jepa.privacy.sampling import n_patients

RATE, DRAWS = 0.1, 3000


def _many_stays(n_patients_: int = 60, heavy_stays: int = 10):
    """Rows whose first bin holds the row index; subject 0 has ``heavy_stays`` rows, every other one."""
    subjects = np.concatenate([np.zeros(heavy_stays, np.int64), np.arange(1, n_patients_)])
    tensors = _tensors(len(subjects))
    tensors.subject_id = subjects
    tensors.bins[:, 0, 0] = np.arange(len(subjects))
    return tensors


def test_a_patient_with_ten_stays_is_drawn_as_often_as_one_with_one_and_once_per_batch():
    tensors = _many_stays()
    rows_of = tensors.subject_id
    heavy = one = 0
    sizes = []
    for batch in itertools.islice(poisson_batches(tensors, RATE, np.random.default_rng(1)), DRAWS):
        drawn = rows_of[batch["bins"][:, 0, 0].numpy()]
        assert len(drawn) == len(set(drawn.tolist())), "a patient appeared twice in one batch"
        heavy += int(0 in drawn)
        one += int(1 in drawn)
        sizes.append(len(drawn))
    # row-level sampling would put the 10-stay patient in 1 - 0.9**10 = 65 % of the batches
    se = 3 * np.sqrt(RATE * (1 - RATE) / DRAWS)
    assert abs(heavy / DRAWS - RATE) < se and abs(one / DRAWS - RATE) < se, (heavy, one)
    assert abs(np.mean(sizes) - RATE * 60) < 0.3  # expected batch = rate x patients, not x rows


def test_every_stay_of_a_patient_can_represent_them():
    tensors = _many_stays()
    seen = set()
    for batch in itertools.islice(poisson_batches(tensors, 1.0, np.random.default_rng(2)), 200):
        seen |= {int(r) for r in batch["bins"][:, 0, 0] if r < 10}
    assert seen == set(range(10))


def test_the_sampling_rate_is_a_share_of_patients_not_of_rows():
    tensors = _many_stays()
    assert len(tensors) == 69 and n_patients(tensors) == 60
    assert sample_rate(6, n_patients(tensors)) == pytest.approx(0.1)
