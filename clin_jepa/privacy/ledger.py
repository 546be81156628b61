"""The site's privacy ledger: the accountant's history on disk, so ε only ever grows.

One JSON file per training run in ``<state_dir>/privacy/<run_id>.json`` holds the run's plan (noise
multiplier, sampling rate, planned steps) and the Opacus accountant's history, a list of
``(noise_multiplier, sample_rate, steps)``. It is read before every round (by any process: a simulation
worker that did not run the previous round, or a restarted SuperNode) and rewritten atomically after the
round's DP steps, before the reply leaves the site. An unreadable ledger stops training: starting a fresh
one would silently reset ε.

Invariants: ``history`` only grows; ``epsilon()`` is the accountant's ε at the ledger's δ for exactly that
history; a round is refused (:class:`BudgetExhausted`) when its steps would take ε above the target.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clin_jepa.errors import ConfigError, PrivacyBudgetExceeded
from clin_jepa.io import atomic_write_text
from clin_jepa.privacy.planning import DPSettings, plan_noise_multiplier

LEDGER_VERSION = 1
History = list[tuple[float, float, int]]


class BudgetExhausted(PrivacyBudgetExceeded):
    """The next round would take the site's ε above its target; the site does not train."""

    def __init__(self, message: str, metrics: dict[str, float]) -> None:
        super().__init__(message)
        self.metrics = metrics


def ledger_path(state_dir: str | Path, run_id: str) -> Path:
    if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
        raise ConfigError(f"privacy ledger: run id {run_id!r} cannot name a file")
    return Path(state_dir) / "privacy" / f"{run_id}.json"


def compute_epsilon(history: History, delta: float, accountant: str = "rdp") -> float:
    """ε of a history at ``delta`` with an Opacus accountant (0 for an empty history)."""
    if not history:
        return 0.0
    from opacus.accountants import create_accountant  # lazily: see clin_jepa.privacy.engine

    acc = create_accountant(mechanism=accountant)
    acc.history = [(float(s), float(q), int(n)) for s, q, n in history]
    return float(acc.get_epsilon(delta=delta))


def _append(history: History, noise: float, rate: float, steps: int) -> History:
    """``history`` plus ``steps`` steps at (noise, rate), merged into the last entry when it matches (as
    Opacus' accountants do step by step)."""
    out = [tuple(h) for h in history]
    if out and out[-1][0] == noise and out[-1][1] == rate:
        out[-1] = (noise, rate, out[-1][2] + steps)
    else:
        out.append((noise, rate, steps))
    return out  # type: ignore[return-value]


@dataclass
class PrivacyLedger:
    path: Path
    site: str
    run_id: str
    accountant: str
    delta: float
    target_epsilon: float
    noise_multiplier: float
    sample_rate: float
    planned_steps: int
    max_grad_norm: float
    history: History = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def open(cls, state_dir: str | Path, *, site: str, run_id: str, settings: DPSettings, rate: float,
             planned_steps: int) -> PrivacyLedger:
        """The run's ledger; created, with noise planned for ``planned_steps``, on the site's first DP round.

        A reopened ledger keeps its planned noise; the current settings' target ε and δ apply, and the
        current sampling rate is what the next steps are accounted at.
        """
        path = ledger_path(state_dir, run_id)
        if not path.exists():
            ledger = cls(path, site, run_id, settings.accountant, settings.delta, settings.target_epsilon,
                         plan_noise_multiplier(settings, rate, planned_steps), rate, planned_steps,
                         settings.max_grad_norm)
            ledger.save()
            return ledger
        ledger = cls.load(path)
        if ledger.site != site or ledger.run_id != run_id:
            raise ConfigError(f"privacy ledger {path} belongs to site {ledger.site!r} run {ledger.run_id!r}, "
                              f"not site {site!r} run {run_id!r}; give each site its own state_dir")
        if settings.accountant != ledger.accountant:
            raise ConfigError(f"privacy ledger {path} accounts with {ledger.accountant!r}; the run now asks "
                              f"for {settings.accountant!r}, which cannot continue its history")
        ledger.target_epsilon, ledger.delta = settings.target_epsilon, settings.delta
        ledger.sample_rate = rate
        ledger.max_grad_norm = settings.max_grad_norm
        return ledger

    @classmethod
    def load(cls, path: Path) -> PrivacyLedger:
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            if raw.get("version") != LEDGER_VERSION:
                raise ValueError(f"version {raw.get('version')!r} != {LEDGER_VERSION}")
            raw.pop("version")
            raw["history"] = [(float(s), float(q), int(n)) for s, q, n in raw["history"]]
            return cls(path=path, **raw)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"privacy ledger {path} is unreadable ({exc}); refusing to train, because a "
                              f"fresh ledger would reset the privacy spent. Restore it from a backup or "
                              f"start a new run.") from None

    def save(self) -> None:
        raw = asdict(self)
        raw.pop("path")
        raw["history"] = [list(h) for h in self.history]
        atomic_write_text(self.path, json.dumps({"version": LEDGER_VERSION, **raw}, indent=1, sort_keys=True))

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.history)

    def epsilon(self, extra_steps: int = 0) -> float:
        """ε spent so far, or after ``extra_steps`` more steps at the current noise and rate."""
        history = self.history
        if extra_steps:
            history = _append(history, self.noise_multiplier, self.sample_rate, extra_steps)
        return compute_epsilon(history, self.delta, self.accountant)

    def check(self, n_steps: int) -> None:
        """Raise :class:`BudgetExhausted` if ``n_steps`` more DP steps would exceed the target ε."""
        after = self.epsilon(n_steps)
        if after > self.target_epsilon:
            raise BudgetExhausted(
                f"site {self.site}: privacy budget exhausted: {n_steps} more DP steps would spend "
                f"ε={after:.3f} > target {self.target_epsilon:g} at δ={self.delta:g} (spent so far "
                f"ε={self.epsilon():.3f} over {self.steps} steps); the site stops training in this run",
                {**self.metrics(), "dp-budget-exhausted": 1})

    def record(self, rnd: int, n_steps: int) -> None:
        """Add ``n_steps`` DP steps taken in round ``rnd`` and save (call before the update leaves)."""
        if n_steps < 0:
            raise ValueError(f"n_steps must be >= 0, got {n_steps}")
        if n_steps:
            self.history = _append(self.history, self.noise_multiplier, self.sample_rate, n_steps)
        self.rounds.append({"round": int(rnd), "steps": int(n_steps), "epsilon": self.epsilon(),
                            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        self.save()

    def metrics(self) -> dict[str, float]:
        """What a reply reports: cumulative ε (this run and all runs in the state dir) and the plan."""
        return {"dp-epsilon": self.epsilon(), "dp-delta": self.delta,
                "dp-target-epsilon": self.target_epsilon,
                "dp-noise-multiplier": self.noise_multiplier, "dp-sample-rate": self.sample_rate,
                "dp-steps": self.steps, "dp-planned-steps": self.planned_steps,
                "dp-epsilon-all-runs": all_runs_epsilon(self.path.parent, self.delta, self.accountant),
                "dp-budget-exhausted": 0}


def all_runs_epsilon(privacy_dir: Path, delta: float, accountant: str = "rdp") -> float:
    """ε of every DP step any run took on this site's data (the ledgers of one state dir composed)."""
    history: History = []
    for path in sorted(Path(privacy_dir).glob("*.json")):
        history += PrivacyLedger.load(path).history
    return compute_epsilon(history, delta, accountant)
