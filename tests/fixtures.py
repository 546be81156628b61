"""Hand-made MEDS datasets and site configs for tests (shared by every test module).

``write_meds(root, events, splits)`` writes a real MEDS tree (parquet, MEDS schema) from a DataFrame;
``write_site_config(path, data_path, ...)`` writes a site YAML for it; ``icu_patient(...)`` builds the
rows of one patient with an ICU stay; ``random_events(...)`` makes a larger plausible dataset fast.
The default local coding (``CODE_MAP``) uses site-style codes and non-canonical units on purpose
(creatinine in umol/L, temperature in degF, hemoglobin in g/L) so harmonization is always exercised.
"""

from __future__ import annotations

from pathlib import Path

import meds
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

START, END = "ICU//ADMIT", "ICU//DISCHARGE"

# local code -> (canonical concept, local unit, canonical -> local factor) for the default test site
LOCAL = {
    "VITAL//HR": ("heart_rate", "bpm", 1.0),
    "VITAL//SBP": ("sbp", "mmHg", 1.0),
    "VITAL//MAP": ("map", "mmHg", 1.0),
    "VITAL//RR": ("resp_rate", "/min", 1.0),
    "VITAL//SPO2": ("spo2", "%", 1.0),
    "VITAL//TEMP": ("temperature", "degF", None),  # affine, see to_local
    "LAB//CREAT": ("creatinine", "umol/L", 88.42),
    "LAB//BUN": ("bun", "mg/dL", 1.0),
    "LAB//NA": ("sodium", "mmol/L", 1.0),
    "LAB//K": ("potassium", "mmol/L", 1.0),
    "LAB//HCO3": ("bicarbonate", "mEq/L", 1.0),
    "LAB//LACT": ("lactate", "mmol/L", 1.0),
    "LAB//HGB": ("hemoglobin", "g/L", 10.0),
    "LAB//WBC": ("wbc", "10^3/uL", 1.0),
    "LAB//PLT": ("platelets", "10^9/L", 1.0),
    "LAB//GLU": ("glucose", "mg/dL", 1.0),
}
TREATMENTS = {"MED//NOREPI": "vasopressor", "MED//NACL": "iv_fluids", "PROC//VENT": "mechanical_ventilation",
              "MED//ABX": "antibiotics", "MED//INSULIN": "insulin", "MED//FUROSEMIDE": "diuretic"}
CODE_MAP = ([{"code": c, "concept": k, "unit": u} for c, (k, u, _) in LOCAL.items()]
            + [{"code": c, "concept": k} for c, k in TREATMENTS.items()])
# typical canonical values used when a test does not care about the exact number
TYPICAL = {"heart_rate": 85.0, "sbp": 120.0, "map": 80.0, "resp_rate": 16.0, "spo2": 97.0,
           "temperature": 37.0, "creatinine": 1.0, "bun": 15.0, "sodium": 140.0, "potassium": 4.2,
           "bicarbonate": 24.0, "lactate": 1.2, "hemoglobin": 12.0, "wbc": 8.0, "platelets": 250.0,
           "glucose": 110.0}
CANONICAL_TO_CODE = {k: c for c, (k, _, _) in LOCAL.items()}


def to_local(concept: str, value: float) -> float:
    """Canonical value -> the value the default test site records."""
    return float(_local_vec(concept, np.array([value]))[0])


def icu_patient(subject_id: int, start: str, stay_hours: float | None,
                measurements: list[tuple[float, str, float]] = (),
                treatments: list[tuple[float, str]] = (), death_hours: float | None = None,
                birth: str = "1960-01-01") -> list[dict]:
    """Rows of one subject: birth, an ICU stay of ``stay_hours`` (None = no end code), measurements
    ``(hours after start, canonical concept, canonical value)`` recorded in the site's local code and unit,
    treatments ``(hours, canonical treatment)``, and optionally death ``death_hours`` after the start."""
    t0 = pd.Timestamp(start)
    at = lambda h: t0 + pd.Timedelta(hours=h)  # noqa: E731
    rows = [{"subject_id": subject_id, "time": pd.Timestamp(birth), "code": meds.birth_code,
             "numeric_value": None},
            {"subject_id": subject_id, "time": t0, "code": START, "numeric_value": None}]
    for h, concept, value in measurements:
        rows.append({"subject_id": subject_id, "time": at(h), "code": CANONICAL_TO_CODE[concept],
                     "numeric_value": to_local(concept, value)})
    code_of = {k: c for c, k in TREATMENTS.items()}
    rows += [{"subject_id": subject_id, "time": at(h), "code": code_of[k], "numeric_value": None}
             for h, k in treatments]
    if stay_hours is not None:
        rows.append({"subject_id": subject_id, "time": at(stay_hours), "code": END, "numeric_value": None})
    if death_hours is not None:
        rows.append({"subject_id": subject_id, "time": at(death_hours), "code": meds.death_code,
                     "numeric_value": None})
    return rows


def events_frame(rows: list[dict]) -> pd.DataFrame:
    """Rows -> a MEDS-typed, subject/time sorted DataFrame."""
    df = pd.DataFrame(rows, columns=["subject_id", "time", "code", "numeric_value"])
    df["subject_id"] = df["subject_id"].astype("int64")
    df["time"] = pd.to_datetime(df["time"]).astype("datetime64[us]")
    df["numeric_value"] = df["numeric_value"].astype("float32")
    return df.sort_values(["subject_id", "time"], kind="stable", na_position="first").reset_index(drop=True)


def meds_table(df: pd.DataFrame) -> pa.Table:
    """A DataFrame with the four core columns as a table in the exact ``meds.DataSchema`` types."""
    schema = pa.schema([("subject_id", pa.int64()), ("time", pa.timestamp("us")), ("code", pa.string()),
                        ("numeric_value", pa.float32())])
    return pa.Table.from_pandas(df[list(schema.names)], schema=schema, preserve_index=False)


def write_meds(root: str | Path, events: pd.DataFrame | list[dict], splits: dict[int, str] | None = None,
               n_shards: int = 1, shard_of: dict[int, str] | None = None) -> Path:
    """Write a MEDS dataset under ``root`` and return ``root``.

    ``splits`` maps subject -> split (default: every subject ``train``). Subjects go to shards
    ``data/<split>/<i>.parquet`` round-robin over ``n_shards`` per split unless ``shard_of`` names a
    shard (relative path without ``.parquet``) per subject.
    """
    root = Path(root)
    df = events if isinstance(events, pd.DataFrame) else events_frame(events)
    subjects = sorted(df["subject_id"].unique().tolist())
    splits = splits if splits is not None else dict.fromkeys(subjects, "train")
    if shard_of is None:
        shard_of = {}
        for split in sorted(set(splits.values())):
            members = [s for s in subjects if splits.get(s) == split]
            shard_of.update({s: f"{split}/{i % n_shards}" for i, s in enumerate(members)})
    names = df["subject_id"].map(lambda s: shard_of.get(s, "unsplit/0"))
    for name, part in df.groupby(names, sort=True):
        path = root / "data" / f"{name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(meds_table(part), path)
    meta = root / "metadata"
    meta.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"subject_id": pa.array(list(splits), pa.int64()),
                             "split": pa.array(list(splits.values()), pa.string())}),
                   meta / "subject_splits.parquet")
    codes = sorted(df["code"].unique().tolist())
    pq.write_table(pa.table({"code": pa.array(codes, pa.string()),
                             "description": pa.array([None] * len(codes), pa.string()),
                             "parent_codes": pa.array([None] * len(codes), pa.list_(pa.string()))}),
                   meta / "codes.parquet")
    return root


def site_config_dict(data_path: str | Path, state_dir: str | Path, site: str = "test_site",
                     **overrides: object) -> dict:
    """A valid site config mapping for the default test coding; ``overrides`` replace top-level keys."""
    raw = {"site": site, "data": {"path": str(data_path)}, "icu_stay": {"start": START, "end": END},
           "code_map": [dict(r) for r in CODE_MAP], "ignore_codes": ["ADMIN//.*"], "max_unmapped_share": 0.05,
           "training": {"batch_size": 4, "device": "cpu"}, "state_dir": str(state_dir)}
    raw.update(overrides)
    return raw


def write_site_config(path: str | Path, data_path: str | Path, state_dir: str | Path | None = None,
                      **overrides: object) -> Path:
    """Write a site YAML at ``path`` (absolute data/state paths) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = state_dir if state_dir is not None else path.parent / "state"
    path.write_text(yaml.safe_dump(site_config_dict(Path(data_path).resolve(), Path(state).resolve(),
                                                    **overrides), sort_keys=False))
    return path


def random_events(n_subjects: int, seed: int = 0, hours: int = 72, every_h: float = 1.0,
                  first_id: int = 1, readmit: float = 0.0) -> pd.DataFrame:
    """A plausible dataset built with vectorized numpy: one ICU stay per subject (30-100 h), every
    measurement concept about every ``every_h`` hours, some treatments, ~10 % deaths at the end of the
    stay. A ``readmit`` share of survivors gets a second, identical stay 5-100 h after the first ends
    (so it can fall inside the first stay's 72 h window). Deterministic in its arguments."""
    rng = np.random.default_rng(seed)
    ids = np.arange(first_id, first_id + n_subjects, dtype=np.int64)
    start = (np.datetime64("2020-01-01T00:00", "us")
             + rng.integers(0, 365 * 24 * 60, n_subjects).astype("timedelta64[m]"))
    stay_h = rng.uniform(30, 100, n_subjects)
    dies = rng.random(n_subjects) < 0.1
    birth = start - (rng.uniform(20, 90, n_subjects) * 365.25 * 24).astype("timedelta64[h]")
    n_obs = max(1, int(hours / every_h))
    parts = []
    for code, (concept, _, _) in LOCAL.items():
        sub = np.repeat(ids, n_obs)
        off_h = (np.tile(np.arange(n_obs) * every_h, n_subjects)
                 + rng.uniform(0, every_h, n_subjects * n_obs))
        canon = TYPICAL[concept] * rng.lognormal(0, 0.15, len(sub))
        parts.append(pd.DataFrame({"subject_id": sub, "off": off_h, "code": code,
                                   "numeric_value": _local_vec(concept, canon)}))
    for code in TREATMENTS:
        sub = ids[rng.random(n_subjects) < 0.3]
        parts.append(pd.DataFrame({"subject_id": sub, "off": rng.uniform(0, 48, len(sub)), "code": code,
                                   "numeric_value": np.nan}))
    ev = pd.concat(parts, ignore_index=True)
    idx = ev["subject_id"].to_numpy() - first_id
    ev = ev[ev["off"].to_numpy() < stay_h[idx]]
    idx = ev["subject_id"].to_numpy() - first_id
    ev = pd.DataFrame({"subject_id": ev["subject_id"].to_numpy(),
                       "time": start[idx] + (ev["off"].to_numpy() * 3.6e9).astype("timedelta64[us]"),
                       "code": ev["code"].to_numpy(), "numeric_value": ev["numeric_value"].to_numpy()})
    fixed = pd.DataFrame({
        "subject_id": np.concatenate([ids, ids, ids, ids[dies]]),
        "time": np.concatenate([birth.astype("datetime64[us]"), start,
                                start + (stay_h * 3.6e9).astype("timedelta64[us]"),
                                (start + (stay_h * 3.6e9).astype("timedelta64[us]"))[dies]]),
        "code": [meds.birth_code] * n_subjects + [START] * n_subjects + [END] * n_subjects
        + [meds.death_code] * int(dies.sum()),
        "numeric_value": np.nan})
    out = pd.concat([fixed, ev], ignore_index=True)
    again = ids[~dies & (rng.random(n_subjects) < readmit)]
    if len(again):
        gap_h = stay_h + rng.uniform(5, 100, n_subjects)
        copy = out[out["subject_id"].isin(again).to_numpy() & ~out["code"].isin([meds.birth_code]).to_numpy()]
        shift = (gap_h[copy["subject_id"].to_numpy() - first_id] * 3.6e9).astype("timedelta64[us]")
        copy = copy.assign(time=copy["time"].to_numpy() + shift)
        out = pd.concat([out, copy], ignore_index=True)
    out["time"] = out["time"].astype("datetime64[us]")
    out["numeric_value"] = out["numeric_value"].astype("float32")
    return out.sort_values(["subject_id", "time"], kind="stable").reset_index(drop=True)


def _local_vec(concept: str, canonical: np.ndarray) -> np.ndarray:
    factor = LOCAL[CANONICAL_TO_CODE[concept]][2]
    return canonical * 9 / 5 + 32 if factor is None else canonical * factor
