"""Validation: each malformed input, written as real parquet files, is reported with its own message."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml
from conftest import HANDMADE_SPLITS, handmade_rows
from fixtures import site_config_dict, write_meds

from clin_jepa.cli import main
from clin_jepa.config import load_site_config
from clin_jepa.data.validate import validate_site
from clin_jepa.errors import DataValidationError

SHARD = "data/train/0.parquet"


def _edit(root: Path, fn: Callable[[pa.Table], pa.Table], shard: str = SHARD) -> None:
    path = root / shard
    pq.write_table(fn(pq.read_table(path)), path)


def _set_column(name: str, array: pa.Array) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        i = t.column_names.index(name)
        return t.set_column(i, name, array)
    return fn


def _replace_at(name: str, row: int, value: object, typ: pa.DataType) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        values = t.column(name).to_pylist()
        values[row] = value
        return _set_column(name, pa.array(values, typ))(t)
    return fn


def _row_of(root: Path, code: str, shard: str = SHARD) -> int:
    codes = pq.read_table(root / shard).column("code").to_pylist()
    return codes.index(code)


def _append_rows(rows: list[dict]) -> Callable[[pa.Table], pa.Table]:
    def fn(t: pa.Table) -> pa.Table:
        extra = pa.Table.from_pylist(rows, schema=t.schema)
        return pa.concat_tables([t, extra])
    return fn


def _splits(root: Path, table: pa.Table) -> None:
    pq.write_table(table, root / "metadata/subject_splits.parquet")


# each case: (id, mutate(root, raw_config), expected fragments of one problem message)
CASES: list[tuple[str, Callable[[Path, dict], None], list[str]]] = [
    ("missing_time_column", lambda r, c: _edit(r, lambda t: t.drop_columns(["time"])),
     [SHARD, "column 'time': missing"]),
    ("subject_id_as_string", lambda r, c: _edit(r, lambda t: _set_column(
        "subject_id", pc.cast(t.column("subject_id"), pa.string()))(t)),
     [SHARD, "column 'subject_id': type string, expected int64"]),
    ("time_as_unparseable_string", lambda r, c: _edit(r, lambda t: _set_column("time", pa.array(
        ["2021-03-01 08:30:00"] * (len(t) - 1) + ["yesterday"], pa.string()))(t)),
     [SHARD, "column 'time': type string, expected timestamp[us]", "not parseable", "'yesterday'"]),
    ("code_as_integer", lambda r, c: _edit(r, lambda t: _set_column("code", pa.array(range(len(t)),
                                                                                   pa.int64()))(t)),
     [SHARD, "column 'code': type int64, expected string"]),
    ("numeric_value_as_string", lambda r, c: _edit(r, lambda t: _set_column(
        "numeric_value", pc.cast(t.column("numeric_value"), pa.string()))(t)),
     [SHARD, "column 'numeric_value': type string, expected float32"]),
    ("misspelled_extra_column", lambda r, c: _edit(r, lambda t: t.rename_columns(
        ["subject_id", "time", "Code", "numeric_value"])),
     [SHARD, "column 'Code': unexpected extra column; did you mean 'code'?"]),
    ("time_with_time_zone", lambda r, c: _edit(r, lambda t: _set_column(
        "time", pc.cast(t.column("time"), pa.timestamp("us", tz="UTC")))(t)),
     [SHARD, "column 'time'", "has a time zone"]),
    ("null_subject_id", lambda r, c: _edit(r, _replace_at("subject_id", 2, None, pa.int64())),
     [SHARD, "column 'subject_id': 1 null value(s)", "row 2"]),
    ("null_code", lambda r, c: _edit(r, _replace_at("code", 3, None, pa.string())),
     [SHARD, "column 'code': 1 null value(s)", "row 3"]),
    ("time_out_of_range", lambda r, c: _edit(r, _replace_at("time", 4, np.datetime64("1850-01-01", "us"),
                                                            pa.timestamp("us"))),
     [SHARD, "column 'time': 1 time(s) outside 1900-2100", "row 4", "1850-01-01"]),
    ("event_before_birth", lambda r, c: _edit(r, _append_rows([{
        "subject_id": 1, "time": np.datetime64("1950-01-01", "us"), "code": "VITAL//HR",
        "numeric_value": 80.0}])),
     [SHARD, "column 'time': 1 event(s) before the subject's MEDS_BIRTH", "subject_id 1", "VITAL//HR"]),
    ("event_after_death", lambda r, c: _edit(r, _append_rows([{
        "subject_id": 2, "time": np.datetime64("2021-03-09", "us"), "code": "LAB//NA",
        "numeric_value": 140.0}])),
     [SHARD, "column 'time': 1 event(s) more than 24 h after the subject's MEDS_DEATH", "subject_id 2"]),
    ("nan_value", lambda r, c: _edit(r, _replace_at("numeric_value", _row_of(r, "VITAL//HR"), float("nan"),
                                                    pa.float32())),
     [SHARD, "column 'numeric_value': 1 value(s) NaN (use null for a missing value)", "VITAL//HR"]),
    ("infinite_value", lambda r, c: _edit(r, _replace_at("numeric_value", _row_of(r, "LAB//NA"),
                                                         float("inf"), pa.float32())),
     [SHARD, "column 'numeric_value': 1 value(s) infinite", "LAB//NA"]),
    ("negative_creatinine", lambda r, c: _edit(r, _replace_at("numeric_value", _row_of(r, "LAB//CREAT"),
                                                              -5.0, pa.float32())),
     [SHARD, "column 'numeric_value': 1 negative value(s)", "LAB//CREAT", "numeric_value -5"]),
    ("subject_in_two_shards", lambda r, c: _edit(r, _append_rows([{
        "subject_id": 4, "time": np.datetime64("2021-04-01T05:00", "us"), "code": "VITAL//HR",
        "numeric_value": 70.0}])),
     ["column 'subject_id': 1 subject(s) appear in more than one shard", "4 (data/train/0.parquet and "
      "data/tuning/0.parquet)"]),
    ("subject_in_two_splits", lambda r, c: _splits(r, pa.table({
        "subject_id": pa.array([1, 2, 3, 4, 5, 1], pa.int64()),
        "split": ["train", "train", "train", "tuning", "held_out", "tuning"]})),
     ["metadata/subject_splits.parquet: column 'split': 1 subject(s) assigned to more than one split",
      "subject_id 1"]),
    ("unknown_split_name", lambda r, c: _splits(r, pa.table({
        "subject_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
        "split": ["train", "train", "test", "tuning", "held_out"]})),
     ["metadata/subject_splits.parquet: column 'split': 1 row(s) with a split other than "
      "['train', 'tuning', 'held_out']", "'test'"]),
    ("subject_missing_from_splits", lambda r, c: _splits(r, pa.table({
        "subject_id": pa.array([1, 2, 4, 5], pa.int64()),
        "split": ["train", "train", "tuning", "held_out"]})),
     [SHARD, "column 'subject_id': 1 subject(s) missing from metadata/subject_splits.parquet", "[3]"]),
    ("splits_file_missing", lambda r, c: (r / "metadata/subject_splits.parquet").unlink(),
     ["metadata/subject_splits.parquet: missing"]),
    ("splits_extra_column", lambda r, c: _splits(r, pa.table({
        "subject_id": pa.array([1, 2, 3, 4, 5], pa.int64()),
        "split": ["train", "train", "train", "tuning", "held_out"], "site": ["a"] * 5})),
     ["metadata/subject_splits.parquet: column 'site': extra column"]),
    ("no_shards", lambda r, c: [p.unlink() for p in (r / "data").rglob("*.parquet")],
     ["no data shards (expected data/**/*.parquet)"]),
    ("empty_shards", lambda r, c: [_edit(r, lambda t: t.slice(0, 0), str(p.relative_to(r)))
                                   for p in (r / "data").rglob("*.parquet")],
     ["the data shards hold no events"]),
    ("corrupt_parquet", lambda r, c: (r / SHARD).write_bytes(b"PAR1 this is not parquet"),
     [SHARD, "not a readable parquet file"]),
    ("truncated_parquet", lambda r, c: (r / SHARD).write_bytes((r / SHARD).read_bytes()[:300]),
     [SHARD, "not a readable parquet file"]),
    ("corrupt_codes_metadata", lambda r, c: (r / "metadata/codes.parquet").write_bytes(b"\x00" * 64),
     ["metadata/codes.parquet: not a readable parquet file"]),
    ("unmapped_codes", lambda r, c: c["code_map"].pop(0),  # VITAL//HR no longer mapped
     ["column 'code':", "of events have codes the code_map does not map", "max_unmapped_share 5.00%",
      "VITAL//HR (2 events, e.g. in data/train/0.parquet)"]),
    ("unknown_unit", lambda r, c: c["code_map"][6].update(unit="mg"),
     ["code_map[6] (code 'LAB//CREAT').unit: unit 'mg' cannot be converted to 'mg/dL'",
      "declare scale/offset"]),
    ("unknown_concept", lambda r, c: c["code_map"][7].update(concept="urea_nitrogen"),
     ["code_map[7] (code 'LAB//BUN').concept: unknown concept 'urea_nitrogen'", "has heart_rate"]),
    ("measurement_without_unit", lambda r, c: c["code_map"][8].pop("unit"),
     ["code_map[8] (code 'LAB//NA').unit: required for measurement concept 'sodium'", "mmol/L"]),
    ("stay_start_matches_nothing", lambda r, c: c["icu_stay"].update(start="ICU//ADMISSION"),
     ["icu_stay.start: regex 'ICU//ADMISSION' matches no code in the data"]),
    ("data_path_missing", lambda r, c: c["data"].update(path=str(r / "nowhere")),
     ["nowhere: data.path does not exist or is not a folder"]),
]


def _write_case(tmp_path: Path, mutate: Callable[[Path, dict], None]) -> Path:
    root = write_meds(tmp_path / "meds", handmade_rows(), HANDMADE_SPLITS)
    raw = site_config_dict(root, tmp_path / "state")
    mutate(root, raw)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_there_are_at_least_20_distinct_cases() -> None:
    assert len({c[0] for c in CASES}) == len(CASES) >= 20


def test_the_unmodified_dataset_is_valid_and_nothing_is_written(tmp_path: Path) -> None:
    cfg = load_site_config(_write_case(tmp_path, lambda r, c: None))
    before = sorted(p for p in tmp_path.rglob("*"))
    summary = validate_site(cfg)
    assert summary.n_subjects == 5 and summary.n_eligible == 5 and summary.n_stays == 6
    assert summary.icu_hours == 60 + 30 + 50 + 26 + 40 and summary.n_events == 8 + 6 + 4 + 5 + 4 + 3
    assert sorted(p for p in tmp_path.rglob("*")) == before and not cfg.state_dir.exists()


@pytest.mark.parametrize(("mutate", "fragments"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_input_is_reported(tmp_path: Path, mutate: Callable, fragments: list[str]) -> None:
    cfg = load_site_config(_write_case(tmp_path, mutate))
    with pytest.raises(DataValidationError) as info:
        validate_site(cfg)
    matching = [p for p in info.value.problems if all(f in p for f in fragments)]
    assert matching, f"no problem contains {fragments}; got {info.value.problems}"


def test_every_problem_is_collected_before_failing(tmp_path: Path) -> None:
    def several(root: Path, raw: dict) -> None:
        _edit(root, _replace_at("numeric_value", _row_of(root, "LAB//NA"), float("inf"), pa.float32()))
        _edit(root, lambda t: t.drop_columns(["time"]), "data/tuning/0.parquet")
        raw["code_map"][6]["unit"] = "mg"
    cfg = load_site_config(_write_case(tmp_path, several))
    with pytest.raises(DataValidationError) as info:
        validate_site(cfg)
    text = str(info.value)
    assert "infinite" in text and "column 'time': missing" in text and "'mg' cannot be converted" in text
    assert len(info.value.problems) == 3


def test_cli_prints_summary_or_every_error_without_traceback(tmp_path: Path, capsys) -> None:
    good = _write_case(tmp_path / "good", lambda r, c: None)
    assert main(["validate", str(good)]) == 0
    out = capsys.readouterr().out
    assert "5 subjects" in out and "6 found, 5 eligible" in out and "LAB//CREAT -> creatinine" in out
    assert "in_icu_mortality: 20.0% (1/5)" in out

    bad = _write_case(tmp_path / "bad", CASES[0][1])
    assert main(["validate", str(good), str(bad)]) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert "column 'time': missing" in captured.err and "1 of 2 site config(s) failed" in captured.err


def test_cli_reports_config_errors_with_key_path(tmp_path: Path, capsys) -> None:
    path = _write_case(tmp_path, lambda r, c: c["training"].update(device="tpu"))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "training.device: 'tpu' is not one of ['cpu', 'cuda', 'auto']" in err and "Traceback" not in err


ODD_TYPES = {
    "subject_id": [pa.int8(), pa.uint64(), pa.float64(), pa.string(), pa.null()],
    "time": [pa.timestamp("s"), pa.timestamp("ns"), pa.date32(), pa.int64(), pa.large_string(), pa.null()],
    "code": [pa.large_string(), pa.dictionary(pa.int32(), pa.string()), pa.binary(), pa.null()],
    "numeric_value": [pa.float64(), pa.int32(), pa.float16(), pa.bool_(), pa.null()],
}


@pytest.mark.parametrize(("column", "typ"), [(c, t) for c, ts in ODD_TYPES.items() for t in ts],
                         ids=[f"{c}-{t}" for c, ts in ODD_TYPES.items() for t in ts])
def test_odd_column_types_are_accepted_or_reported_never_crash(tmp_path: Path, column: str, typ) -> None:
    def cast(t: pa.Table) -> pa.Table:
        col = t.column(column)
        if pa.types.is_null(typ):
            new = pa.nulls(len(t))
        elif pa.types.is_date(typ) or (pa.types.is_integer(typ) and column == "time"):
            new = pc.cast(pc.cast(col, pa.timestamp("s")), pa.int64()) if pa.types.is_integer(typ) \
                else pc.cast(col, pa.date32())
        elif pa.types.is_boolean(typ):
            new = pc.is_valid(col)
        else:
            new = pc.cast(col, typ, safe=False)
        return _set_column(column, new)(t)

    cfg = load_site_config(_write_case(tmp_path, lambda r, c: _edit(r, cast)))
    try:
        summary = validate_site(cfg)
    except DataValidationError as exc:
        assert exc.problems and all(exc.problems)  # (precedence once let any "matches no code" pass)
        assert column in str(exc) or "matches no code" in str(exc)
    else:
        assert summary.n_events > 0
