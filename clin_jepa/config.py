"""Site configuration: one YAML file per hospital, loaded and checked in one place.

Paths inside a site config are relative to the YAML file's own folder, so a config and its data can move
together. Every invalid value raises :class:`ConfigError` naming the key path and what is allowed.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import re2

from clin_jepa.errors import ConfigError, as_kind
from clin_jepa.yamlfile import load_yaml_file

DEVICES = ("cpu", "cuda", "auto")
MAX_REGEX_CHARS = 1000
MAX_BATCH_SIZE = 1 << 16  # beyond this a batch cannot fit any device this project targets
# Reply formats: the trained weights themselves (float32), or the round's update in half precision
# (clin_jepa.federation.encode_reply); float16 is the default transport.
TRANSPORT_DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class CodeRule:
    """Maps a local code (exact, or a regex when ``regex`` is true) to a canonical concept and its unit.

    ``scale``/``offset`` (either given) declare the conversion for a unit no library knows:
    canonical value = value * scale + offset; ``unit`` is then only a label.
    """

    pattern: str
    concept: str
    unit: str | None = None
    regex: bool = False
    scale: float | None = None
    offset: float | None = None

    @property
    def declared(self) -> tuple[float, float] | None:
        """The site's own ``(scale, offset)``, or None when the units library converts ``unit``."""
        if self.scale is None and self.offset is None:
            return None
        return (1.0 if self.scale is None else self.scale), (0.0 if self.offset is None else self.offset)

    def matches(self, code: str) -> bool:
        return compile_regex(self.pattern).fullmatch(code) is not None if self.regex else code == self.pattern


@dataclass(frozen=True)
class StayDefinition:
    """A stay runs from an event whose code matches ``start`` to the next matching ``end``.

    ``key`` is the site config key it came from (``stay`` or the older ``icu_stay``); ``name`` labels it in
    reports (``icu`` unless the site names it, e.g. ``ward`` or ``ed``).
    """

    start: str
    end: str
    name: str = "icu"
    key: str = "icu_stay"
    min_hours: int = 24  # a shorter stay is not used
    context_hours: int = 24  # the prediction time: the patient must be alive then for the stay to be used

    def describe(self) -> str:
        return (f"{self.name} stays ({self.key}: {self.start!r} -> {self.end!r}; used if >= "
                f"{self.min_hours} h and alive at {self.context_hours} h)")


# Content problems real extracts have; each is an error unless the site's data_quality says otherwise.
QUALITY_RULES = ("events_after_death", "events_before_birth", "out_of_range", "negative_values",
                 "duplicates")
QUALITY_ACTIONS = ("error", "drop", "keep")


@dataclass(frozen=True)
class DataQuality:
    """What to do with each kind of content problem (``QUALITY_RULES``): ``error``, ``drop`` or ``keep``.

    ``out_of_range`` alone defaults to ``keep``: the catalog's range was, before policies existed, only the
    span of the shared histograms (values outside fall into its edge cells), and datasets that validated
    then must still validate: the demo's synthetic hospital_b has two BUN values above 200 mg/dL and would
    stop validating under ``error`` (site_configs/README.md, Data quality).
    """

    events_after_death: str = "error"
    events_before_birth: str = "error"
    out_of_range: str = "keep"
    negative_values: str = "error"
    duplicates: str = "error"

    def drops(self, rule: str) -> bool:
        return getattr(self, rule) == "drop"


@dataclass(frozen=True)
class PrivacyConfig:
    enabled: bool = False
    target_epsilon: float = 8.0
    delta: float = 1e-5
    max_grad_norm: float = 1.0
    noise_multiplier: float | None = None
    statistics_epsilon: float | None = None  # noise on the statistics round: clin_jepa.privacy.statistics


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
    data_quality: DataQuality = field(default_factory=DataQuality)
    concept_catalog: Path | None = None  # the catalog this hospital agreed to; None = the run's

    def is_ignored(self, code: str) -> bool:
        return any(compile_regex(p).fullmatch(code) for p in self.ignore_codes)


def _get(d: dict[str, Any], key: str, path: str, typ: type | tuple[type, ...], default: Any = ...) -> Any:
    if key not in d:
        if default is ...:
            raise ConfigError(f"{path}.{key}: required key is missing")
        return default
    try:
        return as_kind(d[key], typ)
    except TypeError:
        names = "/".join(t.__name__ for t in _as_tuple(typ))
        raise ConfigError(f"{path}.{key}: expected {names}, got {d[key]!r}") from None


def _as_tuple(typ: type | tuple[type, ...]) -> tuple[type, ...]:
    return typ if isinstance(typ, tuple) else (typ,)


def _only(d: dict[str, Any], allowed: tuple[str, ...], path: str) -> dict[str, Any]:
    """``d`` itself, after refusing keys outside ``allowed`` (a typo would otherwise be silently ignored)."""
    unknown = sorted(set(d) - set(allowed))
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; allowed: {list(allowed)}")
    return d


@functools.lru_cache(maxsize=1024)
def compile_regex(pattern: str) -> re2._Regexp:
    """``pattern`` compiled by RE2, which matches in time linear in the input: a site's code regexes run
    on every distinct code of its data, and a backtracking engine can take 2^n steps on ``(a+)+$``."""
    options = re2.Options()
    options.log_errors = False  # RE2 would print its own line to stderr besides our error
    return re2.compile(pattern, options=options)


def _regex(pattern: str, path: str) -> str:
    if len(pattern) > MAX_REGEX_CHARS:
        raise ConfigError(f"{path}: regular expression of {len(pattern)} characters; at most "
                          f"{MAX_REGEX_CHARS}")
    try:
        compile_regex(pattern)
    except re2.error as exc:
        reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else exc
        raise ConfigError(f"{path}: invalid regular expression {pattern!r}: {reason} (patterns use RE2 "
                          f"syntax: no look-around or back-references)") from None
    return pattern


def _code_rules(raw: Any, path: str) -> tuple[CodeRule, ...]:
    if not isinstance(raw, list):
        raise ConfigError(f"{path}: expected a list of {{code|regex, concept, unit}} entries, got {raw!r}")
    rules = []
    for i, item in enumerate(raw):
        p = f"{path}[{i}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{p}: expected a mapping with code or regex, concept and unit")
        unknown = set(item) - {"code", "regex", "concept", "unit", "scale", "offset"}
        if unknown:
            raise ConfigError(f"{p}: unknown key(s) {sorted(unknown)}; allowed: code, regex, concept, unit, "
                              f"scale, offset")
        if ("code" in item) == ("regex" in item):
            raise ConfigError(f"{p}: give exactly one of 'code' (exact match) or 'regex'")
        is_regex = "regex" in item
        pattern = _get(item, "regex" if is_regex else "code", p, str)
        if is_regex:
            _regex(pattern, f"{p}.regex")
        unit = _get(item, "unit", p, str, None)
        scale = _get(item, "scale", p, (int, float, type(None)), None)
        offset = _get(item, "offset", p, (int, float, type(None)), None)
        if scale is not None and not (math.isfinite(scale) and scale != 0):
            raise ConfigError(f"{p}.scale: must be a finite non-zero number, got {scale}")
        if offset is not None and not math.isfinite(offset):
            raise ConfigError(f"{p}.offset: must be a finite number, got {offset}")
        rules.append(CodeRule(pattern, _get(item, "concept", p, str), unit, is_regex, scale, offset))
    return tuple(rules)


def _privacy(raw: dict[str, Any], path: str) -> PrivacyConfig:
    keys = ("enabled", "target_epsilon", "delta", "max_grad_norm", "noise_multiplier", "statistics_epsilon")
    _only(raw, keys, path)
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
    stat = _get(raw, "statistics_epsilon", path, (int, float, type(None)), None)
    if stat is not None and not 0 < stat <= eps:
        raise ConfigError(f"{path}.statistics_epsilon: must be a number > 0 and at most the site's lifetime "
                          f"budget {path}.target_epsilon = {eps}, or null (no noise), got {stat}")
    return PrivacyConfig(bool(_get(raw, "enabled", path, bool, False)), eps, delta, clip, noise, stat)


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


def _quality(raw: dict[str, Any]) -> DataQuality:
    _only(raw, QUALITY_RULES, "data_quality")
    for rule, action in raw.items():
        if action not in QUALITY_ACTIONS:
            raise ConfigError(f"data_quality.{rule}: {action!r} is not one of {list(QUALITY_ACTIONS)}")
    return DataQuality(**raw)


def _stay(raw: dict[str, Any]) -> StayDefinition:
    """``stay:`` (any admission/discharge pair) or the older ``icu_stay:``; not both."""
    if ("stay" in raw) == ("icu_stay" in raw):
        raise ConfigError("site config: give exactly one of 'stay' (or its older name 'icu_stay') with start "
                          "and end code regexes")
    key = "stay" if "stay" in raw else "icu_stay"
    stay = _only(_get(raw, key, "site config", dict), ("start", "end", "name", "min_hours", "context_hours"),
                 key)
    name = _get(stay, "name", key, str, "icu")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,32}", name):
        raise ConfigError(f"{key}.name: {name!r} must be 1-32 letters, digits, '_' or '-'")
    hours = {k: _get(stay, k, key, int, getattr(StayDefinition, k)) for k in ("min_hours", "context_hours")}
    for k, v in hours.items():
        if not 1 <= v <= 24 * 365:
            raise ConfigError(f"{key}.{k}: must be between 1 and {24 * 365} hours, got {v}")
    return StayDefinition(_regex(_get(stay, "start", key, str), f"{key}.start"),
                          _regex(_get(stay, "end", key, str), f"{key}.end"), name, key, **hours)


def _resolve(path: Path, key: str) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # Python 3.11 raises RuntimeError for a symlink loop
        raise ConfigError(f"{key}: {path} cannot be resolved ({exc}); point it at a real folder") from None


def _ignore_item(item: Any, i: int) -> str:
    if not isinstance(item, str):
        raise ConfigError(f"ignore_codes[{i}]: expected a code regex string, got {item!r}")
    return item


def is_site_name(name: object) -> bool:
    """A site name becomes a folder (state/<site>, reports) and a key of the server's tables: 1-64
    letters, digits, '_', '.', '-', starting with a letter or digit, without '..'."""
    return (isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) is not None
            and ".." not in name)


def parse_site_config(raw: Any, base_dir: Path, source: Path | None = None) -> SiteConfig:
    """Build a :class:`SiteConfig` from parsed YAML; relative paths resolve against ``base_dir``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source or 'site config'}: expected a YAML mapping at the top level")
    allowed = {"site", "data", "stay", "icu_stay", "code_map", "ignore_codes", "max_unmapped_share",
               "training", "state_dir", "privacy", "limits", "data_quality", "concept_catalog"}
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"site config: unknown key(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    site = _get(raw, "site", "site config", str)
    if not is_site_name(site):
        raise ConfigError(f"site: {site!r} must be 1-64 letters, digits, '_', '.', '-', start with a letter "
                          f"or digit and not contain '..'")
    data = _only(_get(raw, "data", "site config", dict), ("path",), "data")
    training = _only(_get(raw, "training", "site config", dict, {}), ("batch_size", "device"), "training")
    device = _get(training, "device", "training", str, "cpu")
    if device not in DEVICES:
        raise ConfigError(f"training.device: {device!r} is not one of {list(DEVICES)}")
    batch = _get(training, "batch_size", "training", int, 32)
    if not 1 <= batch <= MAX_BATCH_SIZE:
        raise ConfigError(f"training.batch_size: must be between 1 and {MAX_BATCH_SIZE}, got {batch}")
    share = _get(raw, "max_unmapped_share", "site config", (int, float), 0.05)
    if not 0.0 <= share <= 1.0:
        raise ConfigError(f"max_unmapped_share: must be in [0, 1], got {share}")
    ignore = _get(raw, "ignore_codes", "site config", list, [])
    return SiteConfig(
        site=site,
        data_path=_resolve(base_dir / _get(data, "path", "data", str), "data.path"),
        stay=_stay(raw),
        code_map=_code_rules(_get(raw, "code_map", "site config", list), "code_map"),
        ignore_codes=tuple(_regex(_ignore_item(p, i), f"ignore_codes[{i}]") for i, p in enumerate(ignore)),
        max_unmapped_share=float(share),
        batch_size=batch,
        device=device,
        state_dir=_resolve(base_dir / _get(raw, "state_dir", "site config", str, f"../state/{site}"),
                           "state_dir"),
        privacy=_privacy(_get(raw, "privacy", "site config", dict, {}), "privacy"),
        source=source,
        limits=_limits(_get(raw, "limits", "site config", dict, {}), device),
        data_quality=_quality(_get(raw, "data_quality", "site config", dict, {})),
        concept_catalog=(None if (cat := _get(raw, "concept_catalog", "site config", str, "")) == ""
                         else _resolve(base_dir / cat, "concept_catalog")),
    )


def load_site_config(path: str | Path) -> SiteConfig:
    """Read and check one site config YAML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: site config file not found")
    raw = load_yaml_file(path, "site config")
    try:
        return parse_site_config(raw, path.parent.resolve(), path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
