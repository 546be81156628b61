"""The generator's hidden truth per ICU stay, written beside (never inside) the MEDS dataset.

``<site>/ground_truth.parquet`` lies at the root of a site's folder, outside ``data/`` and ``metadata/``,
so MEDS readers, validation and training never see it; ``clin-jepa evaluate --ground-truth`` reads it on
request to form cohorts from what really happened rather than from task labels. One row per ICU stay
(every stay, eligible for the tasks or not); join on ``(subject_id, stay_start)``:

* ``subject_id`` int64 — as in the MEDS data;
* ``stay_start`` timestamp[us] — the ICU admission time, exactly the time of the stay's ICU admission
  event in the MEDS data;
* ``cohort`` string — ``stable``, ``sepsis``, ``aki``, ``respiratory_failure`` or ``hemorrhage``;
* ``onset_hour`` float32 — hours from ``stay_start`` at which the cohort's driver reaches full strength
  (its prodrome, with the trends that announce it, starts hours earlier); NaN for stable stays; may be
  negative (admitted already sick) or beyond the stay's end (the deterioration never came);
* ``deteriorating`` bool — not stable and ``24 < onset_hour < min(stay end, 72)``: the deterioration
  becomes manifest after the 24 h prediction time, inside the 48 h horizon the models roll out over and
  while the stay is still open: the stays whose hidden state *moves* in the horizon;
* ``severity_24h`` float32 — the hidden combined organ dysfunction at hour 24 (the quantity death and
  discharge depend on; 0 = healthy, above about 2 = multi-organ failure); NaN if the stay ended before;
* ``severity_peak`` float32 — its maximum over the hours 24–72 that the stay is open; NaN if the stay
  ended before hour 24.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from clin_jepa.data.synth.hospital import Hospital
from clin_jepa.data.synth.physiology import COHORTS

FILENAME = "ground_truth.parquet"
CONTEXT_H = 24
HORIZON_END_H = 72
SCHEMA = pa.schema([
    ("subject_id", pa.int64()),
    ("stay_start", pa.timestamp("us")),
    ("cohort", pa.string()),
    ("deteriorating", pa.bool_()),
    ("onset_hour", pa.float32()),
    ("severity_24h", pa.float32()),
    ("severity_peak", pa.float32()),
])


def ground_truth_table(h: Hospital) -> pa.Table:
    """One row per ICU stay of ``h``, sorted by (subject_id, stay_start); see the module docstring."""
    course, pop = h.course, h.pop
    sev = course.severity()
    end = course.end
    stable = pop.cohort == COHORTS.index("stable")
    onset = np.where(stable, np.nan, pop.onset)
    deteriorating = ~stable & (onset > CONTEXT_H) & (onset < np.minimum(end, HORIZON_END_H))
    open_at_24 = end > CONTEXT_H
    hours = np.arange(sev.shape[1])[None, :]
    window = (hours >= CONTEXT_H) & (hours <= HORIZON_END_H) & (hours < end[:, None])
    peak = np.where(window, sev, -np.inf).max(axis=1)
    subject = h.subject_id[h.stay_subject]
    order = np.lexsort((h.admit_us, subject))
    columns = {
        "subject_id": subject,
        "stay_start": h.admit_us,
        "cohort": np.array(COHORTS, dtype=object)[pop.cohort],
        "deteriorating": deteriorating,
        "onset_hour": onset.astype(np.float32),
        "severity_24h": np.where(open_at_24, sev[:, CONTEXT_H], np.nan).astype(np.float32),
        "severity_peak": np.where(open_at_24, peak, np.nan).astype(np.float32),
    }
    return pa.table({k: pa.array(v[order], type=SCHEMA.field(k).type) for k, v in columns.items()},
                    schema=SCHEMA)
