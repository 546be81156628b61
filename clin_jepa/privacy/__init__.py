"""Sample-level differential privacy at a site: Opacus DP-SGD on the online modules only, a noise
multiplier planned for the whole run, and a ledger on disk so ε only grows across rounds and restarts.

Public API:

* :class:`DPSettings`, :class:`RunDPOverrides`, :func:`resolve_dp_settings` — which DP a site trains under;
* :func:`sample_rate`, :func:`plan_noise_multiplier` — the run's plan;
* :class:`PrivacyLedger`, :class:`BudgetExhausted`, :func:`compute_epsilon` — the accountant on disk
  (per run, checked against the site's lifetime budget over all runs);
* :func:`check_run_id`, :func:`pin_run_settings` — run ids that stay inside ``state_dir``, settings a
  resumed run must keep;
* :func:`private_training` (context manager, yields the ``PrivacyHook`` and the DP optimizer),
  :func:`poisson_batches`, :func:`private_train_steps` (all of the above for one round).
"""

from typing import TYPE_CHECKING

from clin_jepa.privacy.ledger import (
    BudgetExhausted,
    PrivacyLedger,
    compute_epsilon,
    ledger_path,
)
from clin_jepa.privacy.planning import (
    ACCOUNTANTS,
    GRAD_SAMPLE_MODES,
    DPSettings,
    RunDPOverrides,
    plan_noise_multiplier,
    resolve_dp_settings,
    sample_rate,
)
from clin_jepa.privacy.runs import check_run_id, pin_run_settings, run_path

# The training side (torch, and Opacus where DP runs) loads on first use: the settings, ledger and run ids
# above are what the ClientApp module and the server import, and they need no torch (a simulation process
# loads the ClientApp before it starts Ray: bench/fl_overhead.py).
_LAZY = {"OpacusHook": "engine", "private_training": "engine", "PUBLIC_METRICS": "round",
         "private_train_steps": "round", "poisson_batches": "sampling"}

if TYPE_CHECKING:
    from clin_jepa.privacy.engine import OpacusHook, private_training
    from clin_jepa.privacy.round import PUBLIC_METRICS, private_train_steps
    from clin_jepa.privacy.sampling import poisson_batches


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"clin_jepa.privacy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'clin_jepa.privacy' has no attribute {name!r}")


__all__ = [
    "ACCOUNTANTS", "GRAD_SAMPLE_MODES", "PUBLIC_METRICS", "BudgetExhausted", "DPSettings", "OpacusHook",
    "PrivacyLedger", "RunDPOverrides", "check_run_id", "compute_epsilon", "ledger_path",
    "pin_run_settings", "plan_noise_multiplier", "poisson_batches", "private_train_steps",
    "private_training", "resolve_dp_settings", "run_path", "sample_rate",
]
