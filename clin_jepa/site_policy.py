"""What a coordinator may ask of a site: a rule for every run-config key, and the site's refusal.

The run config belongs to the coordinator; the node config (the SuperNode's command line) and the site
config (the YAML) belong to the hospital. Every run-config key has one rule here (``RUN_CONFIG_RULES``,
listed with reasons in docs/internals.md):

* ``safe``: the coordinator may set it freely (it shapes only the shared model, can only tighten the
  site's privacy, or is never acted on at the site);
* ``bounded``: the site acts on it only up to a limit in its site config (``limits:``);
* ``test hook``: forbidden in deployment; acted on only by a node whose node config sets
  ``allow-test-faults = true``, which the hospital scripts never do.

:func:`refusals` lists what a run asks beyond those limits; the ClientApp (``client/policy.py``) then
answers with an error reply naming every limit and trains nothing. Pure: no Flower, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from clin_jepa.errors import ConfigError

if TYPE_CHECKING:  # annotations only: clin_jepa.localrun imports this module and must stay light
    from clin_jepa.config import SiteConfig
    from clin_jepa.federation import FederationConfig

SAFE, BOUNDED, TEST_HOOK = "safe", "bounded", "test hook"
ALLOW_TEST_FAULTS = "allow-test-faults"
# Flower's simulation engine gives every simulated node the node config {partition-id, num-partitions}
# and has no way to add keys, so whoever starts a simulation (clin_jepa.localrun) opts its nodes in here.
SIMULATION_OPT_IN_ENV = "CLIN_JEPA_SIMULATION_ALLOW_TEST_FAULTS"
# Flower's own Error codes are 0-8; a distinct code lets the server log a refusal as one, not a crash.
REFUSED_CODE = 403


@dataclass(frozen=True)
class KeyRule:
    """The rule for one run-config key; ``limit`` is the site-config key that caps a bounded one."""

    kind: str
    limit: str = ""


_SAFE_KEYS = (
    # acted on at the site, but only shaping the shared model or tightening the site's own privacy
    "num-rounds", "seed", "mode", "phase-fractions", "lr", "min-lr", "lr-warmup", "weight-decay",
    "base-momentum", "align-momentum", "frozen-fraction", "finalize-lr", "finalize-rollout-steps",
    "round-timeout", "dp-central",
    "dp-sample-epsilon", "dp-sample-delta", "dp-sample-max-grad-norm", "dp-sample-noise-multiplier",
    "dp-sample-mode", "dp-sample-accountant", "site-configs",
    # the vocabulary: a site whose config names another catalog refuses at the statistics round
    "concept-catalog",
    # read by the server only (the ClientApp parses them with the rest and ignores them)
    "preset", "n-bins", "checkpoint-dir", "resume-from", "stop-after", "min-sites", "max-norm-ratio",
    "dp-noise-multiplier", "dp-clipping-norm", "dp-central-delta", "signing-key", "fraction-train",
    "synth-if-missing", "aggregation", "aggregation-malicious", "aggregation-beta", "weight-cap", "server-lr",
    "server-momentum", "server-groups",
    "tracking-uri",
    # how often the server asks each site for an evaluation of the global model (aggregates only)
    "eval-every",
    # the training objective: shapes only the shared model; its compute per step (one predictor pass per
    # rollout step) is capped by the run config itself (curriculum.MAX_ROLLOUT_STEPS)
    "loss-rollout-steps", "loss-rollout-weight", "loss-collapse-weight", "loss-collapse-floor",
    "loss-horizon-weight", "loss-obs-weight", "loss-context-mask", "loss-concept-dropout",
    "loss-concept-block-hours", "loss-value-jitter", "loss-jitter-bins", "loss-jepa-to-encoder",
)
RUN_CONFIG_RULES: dict[str, KeyRule] = {
    **{key: KeyRule(SAFE) for key in _SAFE_KEYS},
    "local-steps": KeyRule(BOUNDED, "limits.max_local_steps"),
    "batch-size": KeyRule(BOUNDED, "limits.max_batch_size"),
    "hours": KeyRule(BOUNDED, "limits.max_hours"),
    "device": KeyRule(BOUNDED, "limits.devices"),
    "transport-dtype": KeyRule(BOUNDED, "limits.transport_dtypes"),
    "compile": KeyRule(BOUNDED, "limits.compile"),
    "inject-faults": KeyRule(TEST_HOOK, f"node config {ALLOW_TEST_FAULTS}"),
}


def is_simulated(node_config: Mapping[str, object]) -> bool:
    """A node of Flower's simulation engine: it has a ``partition-id`` and no ``site-config`` (every
    deployed node names its site config: ``deploy/hospital/start-supernode.sh``)."""
    return "partition-id" in node_config and "site-config" not in node_config


def allows_test_faults(node_config: Mapping[str, object], environ: Mapping[str, str]) -> bool:
    """Whether this node acts on test hooks: node config ``allow-test-faults = true``; a simulated node
    may instead be opted in by ``SIMULATION_OPT_IN_ENV=1`` in the environment of its simulation."""
    raw = node_config.get(ALLOW_TEST_FAULTS, False)
    if isinstance(raw, str) and raw.lower() in ("true", "false"):
        raw = raw.lower() == "true"
    if not isinstance(raw, bool):
        raise ConfigError(f"node config {ALLOW_TEST_FAULTS}: expected true or false, got {raw!r}")
    return raw or (is_simulated(node_config) and environ.get(SIMULATION_OPT_IN_ENV) == "1")


def _over(key: str, asked: int, limit: int, what: str = "run config") -> str | None:
    if asked <= limit:
        return None
    return f"{what} {key} = {asked} exceeds {RUN_CONFIG_RULES[key].limit} = {limit}"


def _outside(key: str, asked: str, allowed: tuple[str, ...]) -> str | None:
    if asked in allowed:
        return None
    return f"run config {key} = {asked!r} is not in {RUN_CONFIG_RULES[key].limit} {list(allowed)}"


def refusals(fed: FederationConfig, site: SiteConfig, *, allow_test_faults: bool,
             round_local_steps: int | None = None) -> list[str]:
    """Every way the run ``fed`` asks more of ``site`` than it allows (empty: within its limits).

    ``round_local_steps`` is what a training message itself asks for: the site runs that many steps,
    whatever the run config says, so it is held to the same limit.
    """
    lim = site.limits
    found = [
        _over("local-steps", fed.local_steps, lim.max_local_steps),
        None if round_local_steps is None
        else _over("local-steps", round_local_steps, lim.max_local_steps, "the training message's"),
        _over("batch-size", fed.batch_size, lim.max_batch_size),
        _over("hours", fed.hours, lim.max_hours),
        # "" leaves the choice to the site's own training.device
        _outside("device", fed.device, lim.devices) if fed.device else None,
        _outside("transport-dtype", fed.transport_dtype, lim.transport_dtypes),
        "run config compile = true but limits.compile is false" if fed.compile and not lim.compile else None,
    ]
    if fed.inject_faults and not allow_test_faults:
        found.append(f"run config inject-faults = {fed.inject_faults!r} is a test hook and this node's node "
                     f"config does not set {ALLOW_TEST_FAULTS}=true (deployed hospital nodes never do)")
    return [reason for reason in found if reason]


def refusal_text(site: SiteConfig, reasons: list[str]) -> str:
    """The one-paragraph error a refusing site sends back (and logs)."""
    where = f"site config {site.source}" if site.source else "its site config"
    return (f"site {site.site} refuses this run and trains nothing: {'; '.join(reasons)}. The coordinator "
            f"can change the run config; only the hospital can raise its limits ({where}, node config).")

