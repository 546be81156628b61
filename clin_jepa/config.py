"""Site configuration: one YAML file per hospital, loaded and checked in one place.

Paths inside a site config are relative to the YAML file's own folder, so a config and its data can move
together. Every invalid value raises :class:`ConfigError` naming the key path and what is allowed.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from clin_jepa.errors import ConfigError

DEVICES = ("cpu", "cuda", "auto")
TRANSPORT_DTYPES = ("float32", "float16")


@dataclass(frozen=True)
class CodeRule:
    """Maps a local code (exact, or a regex when ``regex`` is true) to a canonical concept and its unit."""

    pattern: str
    concept: str
    unit: str | None = None
    regex: bool = False

    def matches(self, code: str) -> bool:
        return re.fullmatch(self.pattern, code) is not None if self.regex else code == self.pattern


@dataclass(frozen=True)
class StayDefinition:
    """An ICU stay runs from an event whose code matches ``start`` to the next matching ``end``."""

    start: str
    end: str


@dataclass(frozen=True)
class PrivacyConfig:
    enabled: bool = False
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None


@dataclass(frozen=True)
class SiteLimits:
    """The most a coordinator's run config may ask of this site (``limits:``). A run asking for more is
    refused before any training (``clin_jepa.site_policy``); the defaults admit the project's own runs."""

    max_local_steps: int = 100
    max_batch_size: int = 256
    max_hours: int = 168
    devices: tuple[str, ...] = ("cpu",)
    transport_dtypes: tuple[str, ...] = TRANSPORT_DTYPES
    compile: bool = False


@dataclass(frozen=True)
class SiteConfig:
    site: str
    data_path: Path
    stay: StayDefinition
    code_map: tuple[CodeRule, ...]
    ignore_codes: tuple[str, ...] = ()
    max_unmapped_share: float = 0.05
    batch_size: int = 32
    device: str = "cpu"
    state_dir: Path = Path("state")
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    source: Path | None = None
    limits: SiteLimits = field(default_factory=SiteLimits)

    def is_ignored(self, code: str) -> bool:
        return any(re.fullmatch(p, code) for p in self.ignore_codes)


def _get(d: dict[str, Any], key: str, path: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(f"{path}.{key}: required key is missing")
        return default
    value = d[key]
    if isinstance(typ, tuple) and float in typ and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, typ) or (isinstance(value, bool) and bool not in _as_tuple(typ)):
        names = "/".join(t.__name__ for t in _as_tuple(typ))
        raise ConfigError(f"{path}.{key}: expected {names}, got {value!r}")
    return value


def _as_tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)


def _only(d: dict[str, Any], allowed: tuple[str, ...], path: str) -> dict[str, Any]:
    """``d`` itself, after refusing keys outside ``allowed`` (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return d


def _regex(pattern: str, path: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"{path}: invalid regular expression {pattern!r}: {exc}") from None
    return pattern


def _code_rules(raw: Any, path: str) -> tuple[CodeRule, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of {{code|regex, concept, unit}} entries, got {raw!r}")
    rules = []
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{p}: expected a mapping with code or regex, concept and unit")
        unknown = set(item) - {"code", "regex", "concept", "unit"}
        if unknown:
            raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)}; allowed: code, regex, concept, unit")
        if ("code" in item) == ("regex" in item):
            raise ConfigError(f"{p}: give exactly one of 'code' (exact match) or 'regex'")
        is_regex = "regex" in item
        pattern = _get(item, "regex" if is_regex else "code", p, str)
        if is_regex:
            _regex(pattern, f"{p}.regex")
        unit = _get(item, "unit", p, str, None)
        rules.append(CodeRule(pattern, _get(item, "concept", p, str), unit, is_regex))
    return tuple(rules)


def _privacy(raw: dict[str, Any], path: str) -> PrivacyConfig:
    _only(raw, ("enabled", "target_epsilon", "delta", "max_grad_norm", "noise_multiplier"), path)
    eps = _get(raw, "target_epsilon", path, (int, float), 8.0)
    delta = _get(raw, "delta", path, (int, float), 1e-5)
    clip = _get(raw, "max_grad_norm", path, (int, float), 1.0)
    noise = _get(raw, "noise_multiplier", path, (int, float, type(None)), None)
    # Written as "not x > 0" so that NaN fails too; inf would switch the budget off.
    if not 0 < eps < math.inf:
        raise ConfigError(f"{path}.target_epsilon: must be a finite number > 0, got {eps}")
    if not 0 < delta < 1:
        raise ConfigError(f"{path}.delta: must be in (0, 1), got {delta}")
    if not 0 < clip < math.inf:
        raise ConfigError(f"{path}.max_grad_norm: must be a finite number > 0, got {clip}")
    if noise is not None and not 0 < noise < math.inf:
        raise ConfigError(f"{path}.noise_multiplier: must be a finite number > 0 or null, got {noise}")
    return PrivacyConfig(bool(_get(raw, "enabled", path, bool, False)), eps, delta, clip, noise)


def _choices(raw: dict[str, Any], key: str, allowed: tuple[str, ...],
             default: tuple[str, ...]) -> tuple[str, ...]:
    values = _get(raw, key, "limits", list, list(default))
    bad = [v for v in values if v not in allowed]
    if not values or bad:
        raise ConfigError(f"limits.{key}: expected a non-empty list of {list(allowed)}, got {values!r}")
    return tuple(values)


def _limits(raw: dict[str, Any], device: str) -> SiteLimits:
    _only(raw, ("max_local_steps", "max_batch_size", "max_hours", "devices", "transport_dtypes", "compile"),
          "limits")
    counts = {}
    for key in ("max_local_steps", "max_batch_size", "max_hours"):
        counts[key] = _get(raw, key, "limits", int, getattr(SiteLimits, key))
        if counts[key] < 1:
            raise ConfigError(f"limits.{key}: must be >= 1, got {counts[key]}")
    # A site that trains on "auto" has said it may use either device; any other site only its own.
    own = DEVICES if device == "auto" else (device,)
    return SiteLimits(**counts, devices=_choices(raw, "devices", DEVICES, own),
                      transport_dtypes=_choices(raw, "transport_dtypes", TRANSPORT_DTYPES, TRANSPORT_DTYPES),
                      compile=_get(raw, "compile", "limits", bool, False))


def _ignore_item(item: Any, i: int) -> str:
    if not isinstance(item, str):
        raise ConfigError(f"ignore_codes[{i}]: expected a code regex string, got {item!r}")
    return item


def parse_site_config(raw: Any, base_dir: Path, source: Path | None = None) -> SiteConfig:
    """Build a :class:`SiteConfig` from parsed YAML; relative paths resolve against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'site config'}: expected a YAML mapping at the top level")
    allowed = {"site", "data", "icu_stay", "code_map", "ignore_codes", "max_unmapped_share", "training",
               "state_dir", "privacy", "limits"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"site config: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    site = _get(raw, "site", "site config", str)
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", site):
        raise ConfigError(f"site: {site!r} must use letters, digits, '_', '.', '-' only")
    data = _only(_get(raw, "data", "site config", dict), ("path",), "data")
    stay = _only(_get(raw, "icu_stay", "site config", dict), ("start", "end"), "icu_stay")
    training = _only(_get(raw, "training", "site config", dict, {}), ("batch_size", "device"), "training")
    device = _get(training, "device", "training", str, "cpu")
    if device not in DEVICES:
        raise ConfigError(f"training.device: {device!r} is not one of {list(DEVICES)}")
    batch = _get(training, "batch_size", "training", int, 32)
    if batch < 1:
        raise ConfigError(f"training.batch_size: must be >= 1, got {batch}")
    share = _get(raw, "max_unmapped_share", "site config", (int, float), 0.05)
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"max_unmapped_share: must be in [0, 1], got {share}")
    ignore = _get(raw, "ignore_codes", "site config", list, [])
    return SiteConfig(
        site=site,
        data_path=(base_dir / _get(data, "path", "data", str)).resolve(),
        stay=StayDefinition(_regex(_get(stay, "start", "icu_stay", str), "icu_stay.start"),
                            _regex(_get(stay, "end", "icu_stay", str), "icu_stay.end")),
        code_map=_code_rules(_get(raw, "code_map", "site config", list), "code_map"),
        ignore_codes=tuple(_regex(_ignore_item(p, i), f"ignore_codes[{i}]") for i, p in enumerate(ignore)),
        max_unmapped_share=float(share),
        batch_size=batch,
        device=device,
        state_dir=(base_dir / _get(raw, "state_dir", "site config", str, f"../state/{site}")).resolve(),
        privacy=_privacy(_get(raw, "privacy", "site config", dict, {}), "privacy"),
        source=source,
        limits=_limits(_get(raw, "limits", "site config", dict, {}), device),
    )


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and check one site config YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: site config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        return parse_site_config(raw, path.parent.resolve(), path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
