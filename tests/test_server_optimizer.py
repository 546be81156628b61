"""The server optimizer on each round's average (run config server-lr / server-momentum, FedAvgM)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from clin_jepa.aggregation import server_step
from clin_jepa.curriculum import CurriculumConfig
from clin_jepa.errors import CheckpointError, ConfigError
from clin_jepa.federation import FederationConfig, plan_round
from tests.test_federation_core import _state


def test_plain_fedavg_is_exact_and_momentum_follows_the_heavy_ball_recursion():
    rng = np.random.default_rng(0)
    cur = {"p.w": rng.standard_normal(5).astype(np.float32)}
    avgs = [{"p.w": rng.standard_normal(5).astype(np.float32)} for _ in range(3)]
    velocity: dict[str, np.ndarray] = {}
    assert np.array_equal(server_step(cur, avgs[0], velocity, 1.0, 0.0)["p.w"], avgs[0]["p.w"])
    assert velocity == {}  # nothing to remember without momentum

    w, v, lr, mu = cur["p.w"].astype(np.float64), np.zeros(5), 1.5, 0.6
    state = dict(cur)
    for i, avg in enumerate(avgs):
        delta = avg["p.w"] - w
        v = delta if i == 0 else mu * v + delta
        w = w + lr * v
        state = server_step(state, avg, velocity, lr, mu)
        assert state["p.w"].dtype == np.float32
        np.testing.assert_allclose(state["p.w"], w, rtol=1e-6, atol=1e-6)
        w = state["p.w"].astype(np.float64)  # the server stores float32
    assert set(velocity) == {"p.w"}
    velocity["e.w"] = np.ones(2)
    server_step({"p.w": state["p.w"]}, avgs[0], velocity, lr, mu)
    assert set(velocity) == {"p.w"}  # a group the phase does not train loses its velocity


def _run(state, rounds, save_dir=None):
    from server.state import save_round

    for rnd in rounds:
        plan = plan_round(rnd, state.cfg)
        state.begin_round(plan)
        # a deterministic stand-in for the sites' average: shrink every trained weight towards a target
        avg = {k: (0.9 * v + 0.01 * (i % 7)).astype(v.dtype)
               for i, (k, v) in enumerate(sorted(state.flat(plan.upload).items()))}
        state.end_round(plan, avg)
        if save_dir is not None:
            save_round(state, save_dir, plan.global_step, plan.phase, {"round": rnd}, ["a"])
    return state


def test_momentum_survives_a_resume_and_changes_the_outcome(tmp_path):
    from server.state import resume_state

    cur = CurriculumConfig(fractions=(0.2,) * 5)
    fedavg = _run(_state(tmp_path / "f", curriculum=cur), range(1, 6))
    whole = _run(_state(tmp_path / "w", curriculum=cur, server_lr=1.5, server_momentum=0.5), range(1, 6))
    for g in ("encoder", "predictor"):  # the default server-groups: E only; P stays plain FedAvg
        moved = max(float(np.max(np.abs(whole.groups[g][k] - fedavg.groups[g][k]))) for k in whole.groups[g])
        assert (moved > 1e-3) == (g == "encoder"), g
    both = _run(_state(tmp_path / "b", curriculum=cur, server_lr=1.5, server_momentum=0.5,
                       server_groups="encoder,predictor"), range(1, 6))
    assert any(not np.allclose(both.groups["predictor"][k], v) for k, v in fedavg.groups["predictor"].items())

    split = _run(_state(tmp_path / "s", curriculum=cur, server_lr=1.5, server_momentum=0.5), range(1, 4),
                 tmp_path / "s")
    assert split.velocity  # E trains in round 3 (align), so it has a velocity to carry over
    back = _run(resume_state(split.cfg, tmp_path / "s"), range(4, 6))
    for g in whole.groups:
        for k, v in whole.groups[g].items():
            np.testing.assert_array_equal(back.groups[g][k], v)

    with pytest.raises(ConfigError, match="server-momentum"):
        resume_state(dataclasses.replace(split.cfg, server_momentum=0.0), tmp_path / "s")


def test_a_velocity_that_does_not_fit_the_model_is_refused(tmp_path):
    from server.state import resume_state, save_round

    state = _state(tmp_path, server_momentum=0.5)
    state.velocity = {"predictor.nonexistent": np.zeros(3)}
    save_round(state, tmp_path, 0, "warmup", {}, ["a"])
    with pytest.raises(CheckpointError, match="velocity"):
        resume_state(state.cfg, tmp_path)


@pytest.mark.parametrize("key,value", [("server-lr", 0.0), ("server-lr", math.nan), ("server-lr", 11.0),
                                       ("server-momentum", 1.0), ("server-momentum", -0.1),
                                       ("server-groups", ""), ("server-groups", "encoder,target_encoder")])
def test_bad_server_optimizer_settings_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        FederationConfig.from_run_config({key: value})
