"""Fast tests of the federation's pure core (clin_jepa.federation) and the server's reply screen."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, Metadata, MetricRecord, RecordDict

from clin_jepa.aggregation import ema_update, norm_outliers
from clin_jepa.curriculum import PHASES, CurriculumConfig
from clin_jepa.errors import ConfigError
from clin_jepa.federation import (
    FEDERATED_LR,
    RUN_CONFIG_KEYS,
    FederationConfig,
    join_groups,
    pack_arrays,
    plan_round,
    split_groups,
    unpack_arrays,
    update_norm,
)
from server.checks import screen_replies

REPO = Path(__file__).resolve().parents[1]


def app_config() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_declares_every_run_config_key_and_parses():
    assert set(app_config()) == set(RUN_CONFIG_KEYS)
    cfg = FederationConfig.from_run_config(app_config())
    assert cfg == FederationConfig()  # the shipped defaults are the dataclass defaults
    assert len(cfg.site_configs) == 3 and all((REPO / p).is_file() for p in cfg.site_configs)
    # a federated run's own peak lr, whichever way its config is built; a stored one keeps its own
    stored = {"site_configs": ["a.yaml"]}
    built = (FederationConfig.from_run_config({}), FederationConfig.from_dict(stored), cfg)
    lrs = {c.curriculum.lr for c in built}
    assert lrs == {FEDERATED_LR} and FEDERATED_LR != CurriculumConfig().lr
    assert FederationConfig.from_dict({**stored, "curriculum": {"lr": 0.006}}).curriculum.lr == 0.006


def test_run_config_overrides_and_errors():
    cfg = FederationConfig.from_run_config({**app_config(), "num-rounds": 5, "lr": 1, "mode": "naive",
                                            "phase-fractions": "0.2 0.2 0.2 0.2 0.2",
                                            "site-configs": "a.yaml"})
    assert (cfg.num_rounds, cfg.curriculum.lr, cfg.curriculum.mode) == (5, 1.0, "naive")
    assert cfg.curriculum.fractions == (0.2,) * 5 and cfg.site_configs == ("a.yaml",)
    for bad, words in [({"num-rouns": 3}, "unknown key"), ({"num-rounds": "3"}, "expected int"),
                       ({"num-rounds": 0}, ">= 1"), ({"phase-fractions": "0.5,0.5"}, "fractions"),
                       ({"mode": "fast"}, "mode"), ({"inject-faults": "a:explode@2"}, "inject-faults"),
                       ({"dp-central": "yes"}, "dp-central"), ({"synth-if-missing": 1}, "expected bool")]:
        with pytest.raises(ConfigError, match=words):
            FederationConfig.from_run_config(bad)
    assert FederationConfig.from_dict(cfg.to_dict()) == cfg
    faults = FederationConfig(inject_faults="site1:raise@2, site2:nan, site1:sleep@4")
    assert [faults.fault_for("site1", r) for r in (1, 2, 4)] == ["", "raise", "sleep"]
    assert faults.fault_for("site2", 7) == "nan" and faults.fault_for("site0", 2) == ""


def test_plan_walks_the_five_phases_and_exchanges_only_what_trains():
    cfg = FederationConfig(num_rounds=20, local_steps=3)
    plans = [plan_round(r, cfg) for r in range(1, 21)]
    phases = [p.phase for p in plans]
    assert phases == sorted(phases, key=PHASES.index)  # phases in curriculum order
    assert [phases.count(n) for n in PHASES] == [2, 9, 4, 1, 4]  # fractions of 20 rounds
    for p in plans:
        assert p.global_step == (p.round - 1) * 3 and len(p.lrs) == 3
        trains_e = p.phase in ("joint", "align", "sync")
        assert p.upload == (("encoder", "predictor") if trains_e else ("predictor",))
        assert p.download == ("encoder", "target_encoder", "predictor")
        assert set(p.frozen) == set(p.download) - set(p.upload)
        assert p.hard_sync == (p.phase == "sync")
    # momentum: 1 when E is frozen, 0 during sync (Ē follows E exactly), per-step momentum^K otherwise
    by_phase = {p.phase: p for p in reversed(plans)}  # first round of each phase
    assert by_phase["warmup"].momentum == 1.0 and by_phase["finalize"].momentum == 1.0
    assert by_phase["sync"].momentum == 0.0
    assert by_phase["joint"].momentum == pytest.approx(cfg.curriculum.base_momentum ** 3)
    align = [p.momentum for p in plans if p.phase == "align"]
    assert align == sorted(align, reverse=True) and align[0] > align[-1]  # align ramps momentum down
    with pytest.raises(ConfigError):
        plan_round(21, cfg)


def test_a_zero_round_sync_phase_still_hard_syncs_once():
    cfg = FederationConfig(num_rounds=10)  # 5 % of 10 rounds rounds to no sync round
    plans = [plan_round(r, cfg) for r in range(1, 11)]
    assert "sync" not in [p.phase for p in plans]
    assert [p.round for p in plans if p.hard_sync] == [next(p.round for p in plans if p.phase == "finalize")]


def test_ema_update_keeps_copies_and_moves_between():
    t = {"w": np.zeros(3, np.float32), "n": np.array([1], np.int64)}
    o = {"w": np.ones(3, np.float32), "n": np.array([7], np.int64)}
    np.testing.assert_array_equal(ema_update(t, o, 0.0)["w"], o["w"])
    np.testing.assert_array_equal(ema_update(t, o, 1.0)["w"], t["w"])
    mid = ema_update(t, o, 0.75)
    np.testing.assert_allclose(mid["w"], 0.25)  # (an `and` here skipped the second check: both return None)
    np.testing.assert_array_equal(mid["n"], [7])
    assert mid["w"].dtype == np.float32
    with pytest.raises(ConfigError):
        ema_update(t, {"w": o["w"]}, 0.5)


def test_norm_outlier_rule_flags_one_absurd_update_and_two_that_disagree():
    # 50 against the median of the *others* (1.0, 1.2) = 1.1: flagged, and the reason says so
    assert norm_outliers({1: 1.0, 2: 1.2, 3: 50.0}, 10) == {
        3: "update norm 50 > 10 x median of the others (1.1)"}
    assert norm_outliers({1: 1.0, 2: 1.2, 3: 10.9}, 10) == {}  # just under 10 x 1.1
    # two replies have no majority: a zero update must not get the honest one rejected alone
    assert set(norm_outliers({1: 1.0, 2: 100.0}, 10)) == {1, 2}
    assert set(norm_outliers({1: 0.0, 2: 1.0}, 10)) == {1, 2}
    assert norm_outliers({1: 1.0, 2: 9.0}, 10) == {}
    assert norm_outliers({1: 1.0, 2: 5.0, 3: 2.0}, 10) == {}
    assert norm_outliers({1: 1e9}, 10) == {}
    assert update_norm({"a": np.array([3.0, 4.0])}, {"a": np.zeros(2)}) == pytest.approx(5.0)


def test_wire_helpers_roundtrip():
    groups = {"encoder": {"l.w": np.arange(6, dtype=np.float32).reshape(2, 3)},
              "predictor": {"b": np.ones(2)}}
    flat = join_groups(groups)
    assert set(flat) == {"encoder.l.w", "predictor.b"}
    back = split_groups(unpack_arrays(pack_arrays(flat)))
    np.testing.assert_array_equal(back["encoder"]["l.w"], groups["encoder"]["l.w"])
    assert back["predictor"]["b"].dtype == np.float64


def _reply(node: int, arrays: dict, n: int = 4, error: str | None = None) -> Message:
    """A reply from ``node`` as the SuperLink hands it to the ServerApp."""
    meta = Metadata(run_id=1, message_id="", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=60.0, message_type="train")
    if error:
        return Message(metadata=meta, error=Error(code=2, reason=error))
    content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
                          "metrics": MetricRecord({"num-examples": n})})
    return Message(metadata=meta, content=content)


def test_screen_rejects_errors_timeouts_nan_wrong_keys_and_outliers():
    sent = {"p.w": np.zeros((2, 2), np.float32)}
    good = {"p.w": np.full((2, 2), 0.1, np.float32)}
    replies = [
        _reply(1, good), _reply(2, {"p.w": good["p.w"] * 1.1}), _reply(3, good),
        _reply(4, {"p.w": np.full((2, 2), np.nan, np.float32)}),
        _reply(5, {"p.x": good["p.w"]}),
        _reply(6, {"p.w": np.zeros((3, 2), np.float32)}),
        _reply(7, {"p.w": good["p.w"] * 1000}),
        _reply(8, good, n=0),
        _reply(9, {}, error="RuntimeError: boom"),
    ]
    out = screen_replies(replies, asked=range(1, 11), sent=sent, max_norm_ratio=10)
    assert sorted(m.metadata.src_node_id for m in out.accepted) == [1, 2, 3]
    status = {n: s for n, (s, _) in out.problems.items()}
    assert status == {4: "rejected", 5: "rejected", 6: "rejected", 7: "rejected", 8: "rejected",
                      9: "error", 10: "timeout"}
    reasons = {n: r for n, (_, r) in out.problems.items()}
    assert "NaN" in reasons[4] and "keys" in reasons[5] and "shape" in reasons[6]
    assert "median" in reasons[7] and "num-examples" in reasons[8] and "boom" in reasons[9]


def _state(tmp_path, **cfg):
    from clin_jepa.data.stats import Discretization
    from server.state import ServerState

    disc = Discretization(("heart_rate", "sbp"), ("vasopressor",), 4,
                          {"heart_rate": np.array([60.0, 80, 100]), "sbp": np.array([90.0, 110, 130])})
    return ServerState.initial(FederationConfig(preset="tiny", num_rounds=5, local_steps=2,
                                                checkpoint_dir=str(tmp_path), **cfg), disc)


def test_server_state_moves_target_by_phase_and_resumes(tmp_path):
    from server.state import resume_state, save_round

    state = _state(tmp_path, curriculum=CurriculumConfig(fractions=(0.2,) * 5))
    state.site_patients = {"a": 40, "b": 10**12}  # the aggregation weights' basis survives a restart
    cfg = state.cfg
    assert state.target_gap() == 0.0  # Ē starts as a copy of E
    for rnd in range(1, 6):
        plan = plan_round(rnd, cfg)
        state.begin_round(plan)
        before = {g: {k: v.copy() for k, v in s.items()} for g, s in state.groups.items()}
        trained = {k: v + 0.01 for k, v in state.flat(plan.upload).items()}  # a stand-in for FedAvg
        state.end_round(plan, trained)
        e_now = state.groups["encoder"]
        e_changed = not all(np.array_equal(before["encoder"][k], v) for k, v in e_now.items())
        assert e_changed == (plan.phase in ("joint", "align", "sync"))
        if plan.phase in ("joint", "align"):
            assert 0 < state.target_gap() < 0.01 * rnd  # Ē lags E, by less than E moved in total
        else:
            assert state.target_gap() == 0.0  # warmup: untouched; sync: copied; finalize: E frozen
        save_round(state, tmp_path, plan.global_step + 2, plan.phase, {"round": rnd}, ["a", "b"])
    back = resume_state(cfg, tmp_path)
    assert back.round == 5 and back.run_id == state.run_id and back.site_patients == {"a": 40, "b": 10**12}
    assert back.disc.fingerprint() == state.disc.fingerprint()
    for g in state.groups:
        for k, v in state.groups[g].items():
            np.testing.assert_array_equal(back.groups[g][k], v)
    with pytest.raises(ConfigError, match="local-steps"):
        resume_state(dataclasses.replace(cfg, local_steps=3), tmp_path)
    with pytest.raises(ConfigError, match="loss"):  # another objective is another run
        resume_state(dataclasses.replace(cfg, loss=dataclasses.replace(cfg.loss, concept_block_hours=6)),
                     tmp_path)
    resume_state(dataclasses.replace(cfg, min_sites=1, round_timeout=5.0), tmp_path)  # not schedule: fine


def test_a_federated_run_from_before_finalize_lr_resumes_only_with_its_old_schedule(tmp_path, monkeypatch):
    from server.state import resume_state, save_round

    state = _state(tmp_path)
    plain = CurriculumConfig.to_dict
    monkeypatch.setattr(CurriculumConfig, "to_dict",
                        lambda self: {k: v for k, v in plain(self).items() if k != "finalize_lr"})
    save_round(state, tmp_path, 0, "warmup", {}, ["a"])  # written as a run from before the key existed
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="curriculum"):  # it kept the cosine: a restart would differ
        resume_state(state.cfg, tmp_path)
    kept = dataclasses.replace(state.cfg.curriculum, finalize_lr=0.0)
    old = dataclasses.replace(state.cfg, curriculum=kept)
    assert resume_state(old, tmp_path).round == state.round
