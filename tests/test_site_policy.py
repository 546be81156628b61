"""What a coordinator may ask of a site (clin_jepa.site_policy, pure): every run-config key has a rule,
docs/internals.md lists the same rules, safe keys pass, bounded keys stop at the site's ``limits:``, and
the test hook needs the node's opt-in. The same rules through the real ClientApp: test_site_policy_flower.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from fixtures import site_config_dict

from clin_jepa.config import DEVICES, TRANSPORT_DTYPES, SiteLimits, load_site_config, parse_site_config
from clin_jepa.errors import ConfigError
from clin_jepa.federation import RUN_CONFIG_KEYS, FederationConfig
from clin_jepa.site_policy import (
    ALLOW_TEST_FAULTS,
    BOUNDED,
    RUN_CONFIG_RULES,
    SAFE,
    SIMULATION_OPT_IN_ENV,
    TEST_HOOK,
    allows_test_faults,
    refusal_text,
    refusals,
)

DOCS = Path(__file__).resolve().parents[1] / "docs" / "internals.md"
# A limits block below every default, so that "at the limit" and "one past it" are both small requests.
LIMITS = {"max_local_steps": 3, "max_batch_size": 8, "max_hours": 48, "devices": ["cpu"],
          "transport_dtypes": ["float16"], "compile": False}
# a run within LIMITS, which each test then changes in one key
WITHIN = {"local-steps": 1, "hours": 48}
# per bounded key: (the most the site above allows, one step past it)
AT_AND_PAST_LIMIT = {"local-steps": (3, 4), "batch-size": (8, 9), "hours": (48, 49),
                     "device": ("cpu", "cuda"), "transport-dtype": ("float16", "bfloat16"),
                     "compile": (False, True)}
# per safe key: a valid value other than the default (the coordinator's free choice)
SAFE_VALUES = {
    "num-rounds": 7, "seed": 3, "mode": "naive", "phase-fractions": "0.2,0.2,0.2,0.2,0.2", "lr": 0.01,
    "min-lr": 0.0001, "lr-warmup": 0.1, "weight-decay": 0.0, "base-momentum": 0.99, "align-momentum": 0.8,
    "frozen-fraction": 0.3, "round-timeout": 30.0, "dp-central": "server-fixed", "dp-sample-epsilon": 4.0,
    "dp-sample-delta": 1e-6, "dp-sample-max-grad-norm": 0.5, "dp-sample-noise-multiplier": 1.1,
    "dp-sample-mode": "functorch", "dp-sample-accountant": "prv", "site-configs": "elsewhere/x.yaml",
    "preset": "base", "n-bins": 5, "checkpoint-dir": "/elsewhere/ckpt", "resume-from": "/elsewhere/ckpt",
    "stop-after": 2, "min-sites": 1, "max-norm-ratio": 5.0, "dp-noise-multiplier": 0.5,
    "dp-clipping-norm": 2.0, "dp-central-delta": 1e-6, "signing-key": "/elsewhere/signing.key",
    "fraction-train": 0.5, "synth-if-missing": False, "aggregation": "fedavg", "aggregation-malicious": 2,
    "aggregation-beta": 0.3, "weight-cap": 2.0, "server-lr": 2.0, "server-momentum": 0.5, "finalize-lr": 0.2,
    "finalize-rollout-steps": 6,
    "server-groups": "encoder,predictor",
    "concept-catalog": "/elsewhere/catalog.yaml", "tracking-uri": "off", "eval-every": 3,
    "loss-rollout-steps": 24, "loss-rollout-weight": 2.0, "loss-collapse-weight": 1.0,
    "loss-collapse-floor": 0.1, "loss-horizon-weight": 0.0, "loss-obs-weight": 0.0, "loss-context-mask": 0.5,
    "loss-concept-dropout": 0.0, "loss-concept-block-hours": 6, "loss-value-jitter": 0.0,
    "loss-jitter-bins": 1, "loss-jepa-to-encoder": False,
}


def site(tmp_path: Path, limits: dict | None = LIMITS, device: str = "cpu"):
    raw = site_config_dict(tmp_path / "data", tmp_path / "state", site="hospital_x",
                           training={"batch_size": 4, "device": device})
    if limits is not None:
        raw["limits"] = limits
    return parse_site_config(raw, tmp_path, tmp_path / "hospital_x.yaml")


def keys_of(kind: str) -> list[str]:
    return sorted(k for k, rule in RUN_CONFIG_RULES.items() if rule.kind == kind)


def test_every_run_config_key_has_exactly_one_rule():
    assert set(RUN_CONFIG_RULES) == set(RUN_CONFIG_KEYS)
    assert {rule.kind for rule in RUN_CONFIG_RULES.values()} == {SAFE, BOUNDED, TEST_HOOK}
    for key in keys_of(BOUNDED):  # a bounded key names the site-config limit that caps it
        field = RUN_CONFIG_RULES[key].limit.removeprefix("limits.")
        assert field in SiteLimits.__dataclass_fields__, key
    assert set(AT_AND_PAST_LIMIT) == set(keys_of(BOUNDED)) and set(SAFE_VALUES) == set(keys_of(SAFE))


def test_internals_inventory_lists_every_key_with_its_rule():
    rows = re.findall(r"^\| `([a-z0-9-]+)` \| (safe|bounded|test hook) \| ([^|]*) \|", DOCS.read_text(), re.M)
    documented = {key: (kind, limit.replace("`", "").strip()) for key, kind, limit in rows}
    assert documented == {k: (r.kind, r.limit) for k, r in RUN_CONFIG_RULES.items()}


@pytest.mark.parametrize("key", keys_of(SAFE))
def test_safe_key_is_accepted_by_a_deployed_node(tmp_path, key):
    fed = FederationConfig.from_run_config({**WITHIN, key: SAFE_VALUES[key]})
    assert refusals(fed, site(tmp_path), allow_test_faults=False) == []


@pytest.mark.parametrize("key", keys_of(BOUNDED))
def test_bounded_key_stops_at_the_site_limit(tmp_path, key):
    at, past = AT_AND_PAST_LIMIT[key]
    limited = site(tmp_path)
    assert refusals(FederationConfig.from_run_config({**WITHIN, key: at}), limited,
                    allow_test_faults=False) == []
    reasons = refusals(FederationConfig.from_run_config({**WITHIN, key: past}), limited,
                       allow_test_faults=False)
    assert len(reasons) == 1 and f"run config {key}" in reasons[0]
    assert RUN_CONFIG_RULES[key].limit in reasons[0]  # names the limit, and so where to raise it


def test_a_training_message_is_held_to_the_same_step_limit(tmp_path):
    reasons = refusals(FederationConfig(local_steps=2, hours=48), site(tmp_path), allow_test_faults=False,
                       round_local_steps=50)
    assert reasons == ["the training message's local-steps = 50 exceeds limits.max_local_steps = 3"]


def test_device_left_to_the_site_is_never_refused(tmp_path):
    assert refusals(FederationConfig(device="", local_steps=1, hours=48), site(tmp_path),
                    allow_test_faults=False) == []


def test_default_limits_admit_the_project_runs_and_follow_the_site_device(tmp_path):
    plain = site(tmp_path, limits=None)
    assert plain.limits == SiteLimits()
    assert refusals(FederationConfig(), plain, allow_test_faults=False) == []  # pyproject's defaults
    assert refusals(FederationConfig(device="cuda"), plain, allow_test_faults=False)
    assert site(tmp_path, limits=None, device="cuda").limits.devices == ("cuda",)
    assert site(tmp_path, limits=None, device="auto").limits.devices == DEVICES
    assert plain.limits.transport_dtypes == TRANSPORT_DTYPES and plain.limits.compile is False


@pytest.mark.parametrize("limits,words", [
    ({"max_local_steps": 0}, "limits.max_local_steps: must be >= 1"),
    ({"max_hours": True}, "limits.max_hours: expected int"),
    ({"devices": ["gpu"]}, "limits.devices: expected a non-empty list"),
    ({"transport_dtypes": []}, "limits.transport_dtypes: expected a non-empty list"),
    ({"compile": "yes"}, "limits.compile: expected bool"),
    ({"max_rounds": 3}, "limits: unknown key(s) ['max_rounds']"),
])
def test_bad_limits_are_config_errors(tmp_path, limits, words):
    with pytest.raises(ConfigError, match=re.escape(words)):
        site(tmp_path, limits=limits)


def test_limits_round_trip_through_yaml(tmp_path):
    path = tmp_path / "hospital_x.yaml"
    path.write_text(yaml.safe_dump({**site_config_dict(tmp_path, tmp_path), "limits": LIMITS}))
    assert load_site_config(path).limits == SiteLimits(3, 8, 48, ("cpu",), ("float16",), False)


def test_a_deployed_node_refuses_the_test_hook_whoever_it_names(tmp_path):
    for spec in ("hospital_x:raise@2", "hospital_y:nan"):
        fed = FederationConfig(inject_faults=spec, local_steps=1, hours=48)
        reasons = refusals(fed, site(tmp_path), allow_test_faults=False)
        assert len(reasons) == 1 and f"{ALLOW_TEST_FAULTS}=true" in reasons[0] and spec in reasons[0]
        assert refusals(fed, site(tmp_path), allow_test_faults=True) == []


@pytest.mark.parametrize("node_config,environ,allowed", [
    ({"site-config": "/s.yaml"}, {}, False),
    ({"site-config": "/s.yaml", ALLOW_TEST_FAULTS: True}, {}, True),
    ({"site-config": "/s.yaml", ALLOW_TEST_FAULTS: "true"}, {}, True),
    ({"site-config": "/s.yaml", ALLOW_TEST_FAULTS: False}, {SIMULATION_OPT_IN_ENV: "1"}, False),
    # the simulation's opt-in reaches only nodes of Flower's simulation engine
    ({"site-config": "/s.yaml", "partition-id": 0}, {SIMULATION_OPT_IN_ENV: "1"}, False),
    ({"partition-id": 0, "num-partitions": 3}, {SIMULATION_OPT_IN_ENV: "1"}, True),
    ({"partition-id": 0, "num-partitions": 3}, {SIMULATION_OPT_IN_ENV: "0"}, False),
    ({"partition-id": 0, "num-partitions": 3}, {}, False),
])
def test_who_has_opted_in_to_test_hooks(node_config, environ, allowed):
    assert allows_test_faults(node_config, environ) is allowed


def test_a_malformed_opt_in_is_a_config_error():
    with pytest.raises(ConfigError, match="node config allow-test-faults: expected true or false"):
        allows_test_faults({ALLOW_TEST_FAULTS: "yes"}, {})


def test_refusal_is_one_paragraph_naming_the_site_every_limit_and_who_can_change_it(tmp_path):
    fed = FederationConfig(local_steps=9, batch_size=64, hours=48, inject_faults="hospital_x:raise")
    limited = site(tmp_path)
    text = refusal_text(limited, refusals(fed, limited, allow_test_faults=False))
    assert "\n" not in text and text.startswith("site hospital_x refuses this run and trains nothing")
    for words in ("limits.max_local_steps = 3", "limits.max_batch_size = 8", ALLOW_TEST_FAULTS,
                  str(tmp_path / "hospital_x.yaml")):
        assert words in text
