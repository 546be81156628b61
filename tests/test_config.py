"""Site config loading: valid files parse; every invalid value names its key path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fixtures import site_config_dict

from clin_jepa.config import load_site_config
from clin_jepa.errors import ConfigError


def _write(tmp_path: Path, raw: object) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw))
    return path


def test_valid_config_resolves_paths_relative_to_the_file(tmp_path: Path) -> None:
    raw = site_config_dict("../data/x", "../state/x")
    (tmp_path / "configs").mkdir()
    cfg = load_site_config(_write(tmp_path / "configs", raw))
    assert cfg.data_path == (tmp_path / "data" / "x").resolve()
    assert cfg.state_dir == (tmp_path / "state" / "x").resolve()
    assert cfg.stay.start == "ICU//ADMIT" and cfg.batch_size == 4 and cfg.device == "cpu"
    rule = cfg.code_map[6]
    assert (rule.pattern, rule.concept, rule.unit) == ("LAB//CREAT", "creatinine", "umol/L")
    assert not rule.regex
    assert rule.matches("LAB//CREAT") and not rule.matches("LAB//CREATININE")
    assert cfg.is_ignored("ADMIN//INSURANCE") and not cfg.is_ignored("LAB//NA")
    assert not cfg.privacy.enabled and cfg.max_unmapped_share == 0.05


def _with(**changes: object) -> dict:
    raw = site_config_dict("data", "state")
    for dotted, value in changes.items():
        keys = dotted.split("__")
        target = raw
        for k in keys[:-1]:
            target = target.setdefault(k, {})
        if value is KeyError:
            target.pop(keys[-1])
        else:
            target[keys[-1]] = value
    return raw


@pytest.mark.parametrize(("raw", "message"), [
    ("site: [unclosed", "not valid YAML"),
    (["a", "list"], "expected a YAML mapping at the top level"),
    (_with(sites="x"), "unknown key(s) ['sites']"),
    (_with(site=KeyError), "site config.site: required key is missing"),
    (_with(site="bad name!"), "site: 'bad name!' must be 1-64 letters, digits"),
    (_with(data__path=KeyError), "data.path: required key is missing"),
    (_with(data__root="x"), "data: unknown key(s) ['root']; allowed: ['path']"),
    (_with(icu_stay__start="ICU//(ADMIT"), "icu_stay.start: invalid regular expression"),
    (_with(icu_stay__stop="x"),
     "icu_stay: unknown key(s) ['stop']; allowed: ['start', 'end', 'name', 'min_hours', 'context_hours']"),
    (_with(training__device="tpu"), "training.device: 'tpu' is not one of ['cpu', 'cuda', 'auto']"),
    (_with(training__batch_size=0), "training.batch_size: must be between 1 and 65536, got 0"),
    (_with(training__batch_size="32"), "training.batch_size: expected int, got '32'"),
    (_with(training__lr=0.1), "training: unknown key(s) ['lr']; allowed: ['batch_size', 'device']"),
    (_with(max_unmapped_share=1.5), "max_unmapped_share: must be in [0, 1], got 1.5"),
    (_with(code_map={"a": 1}), "code_map: expected list, got {'a': 1}"),
    (_with(code_map=[{"code": "A", "regex": "A", "concept": "map"}]), "code_map[0]: give exactly one of"),
    (_with(code_map=[{"code": "A", "concept": "map", "units": "mmHg"}]),
     "code_map[0]: unknown key(s) ['units']"),
    (_with(code_map=[{"regex": "A(", "concept": "map"}]), "code_map[0].regex: invalid regular expression"),
    (_with(code_map=[{"code": "A"}]), "code_map[0].concept: required key is missing"),
    (_with(ignore_codes=[3]), "ignore_codes[0]: expected a code regex string, got 3"),
    (_with(privacy__delta=2.0), "privacy.delta: must be in (0, 1), got 2.0"),
    (_with(privacy__target_epsilon=0), "privacy.target_epsilon: must be a finite number > 0"),
    (_with(privacy__target_epsilon=float("inf")), "privacy.target_epsilon: must be a finite number > 0"),
    (_with(privacy__target_epsilon=float("nan")), "privacy.target_epsilon: must be a finite number > 0"),
    (_with(privacy__max_grad_norm=float("nan")), "privacy.max_grad_norm: must be a finite number > 0"),
    (_with(privacy__epsilon=1.0), "privacy: unknown key(s) ['epsilon']"),
])
def test_invalid_values_name_key_path_and_allowed_values(tmp_path: Path, raw: object, message: str) -> None:
    path = _write(tmp_path, raw)
    with pytest.raises(ConfigError) as info:
        load_site_config(path)
    assert message in str(info.value) and str(path) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="site config file not found"):
        load_site_config(tmp_path / "nope.yaml")


def test_one_rule_for_config_value_kinds():
    # the rule site YAML, the run config and the config dataclasses share (clin_jepa.errors.as_kind)
    from clin_jepa.errors import as_kind

    assert as_kind(3, float) == 3.0 and type(as_kind(3, float)) is float
    assert as_kind(3, (int, float)) == 3 and as_kind(None, (int, float, type(None))) is None
    assert as_kind(True, bool) is True and as_kind(0.5, float) == 0.5
    for value, kinds in [(True, int), (False, float), (True, (int, float)), ("3", float), (2.5, int)]:
        with pytest.raises(TypeError):
            as_kind(value, kinds)
