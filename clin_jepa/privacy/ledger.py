"""The site's privacy ledger: the accountant's history on disk, so ε only ever grows.

One JSON file per training run in ``<state_dir>/privacy/<run_id>.json`` holds the run's plan (noise
multiplier, sampling rate, planned steps) and the Opacus accountant's history, a list of
``(noise_multiplier, sample_rate, steps)``. It is read before every round (by any process: a simulation
worker that did not run the previous round, or a restarted SuperNode). An unreadable ledger stops
training: starting a fresh one would silently reset ε.

The budget belongs to the site, not to the run: the run id comes from the coordinator, and a new id must
not buy a new budget. :meth:`PrivacyLedger.reserve` therefore checks two limits under a lock on the
state directory: the run's target (the smaller of the site's and the run config's ε) for this run's
history, and the site's *lifetime* budget (its config ``privacy.target_epsilon`` at ``privacy.delta``)
for the composition of every run's history in the state directory. It writes the round's steps to disk
before the first of them is taken, so a crash between spending and sending counts as spent.

Invariants: ``history`` only grows; ``epsilon()`` is the accountant's ε at the ledger's δ for exactly that
history; a round is refused (:class:`BudgetExhausted`) when its steps would take the run's ε above its
target or the site's all-runs ε above its lifetime budget.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from clin_jepa.errors import ConfigError, PrivacyBudgetExceeded
from clin_jepa.io import atomic_write_text
from clin_jepa.privacy.planning import DPSettings, plan_noise_multiplier
from clin_jepa.privacy.runs import check_run_id, run_path

LEDGER_VERSION = 1
History = list[tuple[float, float, int]]


class BudgetExhausted(PrivacyBudgetExceeded):
    """The next round would take the site's ε above its target; the site does not train."""

    def __init__(self, message: str, metrics: dict[str, float]) -> None:
        super().__init__(message)
        self.metrics = metrics


def ledger_path(state_dir: str | Path, run_id: str) -> Path:
    """The run's ledger file; a :class:`ConfigError` for a run id that could name a file elsewhere."""
    return run_path(state_dir, "privacy", f"{check_run_id(run_id)}.json")


@contextmanager
def _locked(privacy_dir: Path) -> Iterator[None]:
    """Serialize check-and-spend across processes: two runs at one site must not both pass the lifetime
    check on the same remaining budget."""
    privacy_dir.mkdir(parents=True, exist_ok=True)
    with (privacy_dir / ".lock").open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
    lifetime_epsilon: float = 0.0  # the site's budget over all runs (0 in old ledgers: the run's target)
    lifetime_delta: float = 0.0

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
            ledger.lifetime_epsilon, ledger.lifetime_delta = settings.lifetime()
            with _locked(path.parent):
                if settings.noise_multiplier is None:  # planned, not configured: fit what is LEFT
                    ledger.noise_multiplier = ledger.plan_within_lifetime()
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
        ledger.lifetime_epsilon, ledger.lifetime_delta = settings.lifetime()
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

    def _lifetime(self) -> tuple[float, float]:
        if self.lifetime_epsilon > 0 and 0 < self.lifetime_delta < 1:
            return self.lifetime_epsilon, self.lifetime_delta
        return self.target_epsilon, self.delta

    def _other_runs(self) -> History:
        """The histories of every other run's ledger in this state directory (an unreadable one stops
        the site: its spend cannot be left out of the lifetime budget)."""
        history: History = []
        for path in sorted(self.path.parent.glob("*.json")):
            if path.resolve() != self.path.resolve():
                history += PrivacyLedger.load(path).history
        return history

    def lifetime_epsilon_spent(self, extra_steps: int = 0) -> float:
        """ε of every run on this site's state directory, at the site's lifetime δ."""
        history = self.history
        if extra_steps:
            history = _append(history, self.noise_multiplier, self.sample_rate, extra_steps)
        return compute_epsilon(self._other_runs() + list(history), self._lifetime()[1], self.accountant)

    def plan_within_lifetime(self) -> float:
        """The noise multiplier for this run's planned steps: the run's own plan, raised when the site's
        earlier runs leave less of its lifetime budget than that plan would spend, so the whole run fits
        in what remains (within 0.5 % of the smallest such noise, by bisection on Opacus' accountant).
        When (almost) nothing remains the run's plan is kept and :meth:`check` refuses its first round."""
        lifetime, delta = self._lifetime()
        other = self._other_runs()

        def spent(noise: float) -> float:
            return compute_epsilon(other + [(noise, self.sample_rate, self.planned_steps)], delta,
                                   self.accountant)

        low = self.noise_multiplier
        if not other or spent(low) <= lifetime:
            return low
        if compute_epsilon(other, delta, self.accountant) > 0.99 * lifetime:
            return low  # less than 1 % left: nothing worth planning for; check() refuses the round
        high = max(2 * low, 1.0)
        while spent(high) > lifetime:
            if high > 1e3:
                return low
            high *= 2
        while high - low > 0.005 * high:  # 0.5 %: each accountant call costs ~0.1-0.7 s here
            mid = (low + high) / 2
            low, high = (low, mid) if spent(mid) <= lifetime else (mid, high)
        return high

    def check(self, n_steps: int) -> None:
        """Raise :class:`BudgetExhausted` if ``n_steps`` more DP steps would exceed the run's target ε or
        the site's lifetime budget."""
        after, spent = self.epsilon(n_steps), self.epsilon()
        limit, where = self.target_epsilon, f"this run's target {self.target_epsilon:g} at δ={self.delta:g}"
        if after <= limit:
            after, spent = self.lifetime_epsilon_spent(n_steps), self.lifetime_epsilon_spent()
            limit, delta = self._lifetime()
            where = f"the site's lifetime budget {limit:g} at δ={delta:g} over all runs"
        if after > limit:
            raise BudgetExhausted(
                f"site {self.site}: privacy budget exhausted: {n_steps} more DP steps would spend "
                f"ε={after:.3f} > {where} (spent so far ε={spent:.3f}); the site does not train",
                {**self.metrics(), "dp-budget-exhausted": 1})

    def reserve(self, rnd: int, n_steps: int) -> None:
        """Check the budget for round ``rnd``'s ``n_steps`` DP steps and record them as spent, on disk,
        before the first is taken. A round that fails half-way keeps its whole reservation: ε is never
        under-counted, only (after a failure) over-counted."""
        with _locked(self.path.parent):
            if self.path.exists():  # another process of this site may have spent since we opened it
                on_disk = PrivacyLedger.load(self.path)
                self.history, self.rounds = on_disk.history, on_disk.rounds
            self.check(n_steps)
            self.record(rnd, n_steps)

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
                "dp-epsilon-all-runs": self.lifetime_epsilon_spent(),
                "dp-lifetime-epsilon": self._lifetime()[0], "dp-budget-exhausted": 0}

