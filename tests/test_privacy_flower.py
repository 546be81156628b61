"""End-to-end DP under `flwr run` (Flower simulation) on synthetic hospitals (`clin-jepa synth`).

* sample-level: every site's reported ε per round equals an independent Opacus accountant; a site whose
  next round would exceed its budget answers "budget-exhausted" and the run goes on with the others; a
  resumed run (new client processes) continues each site's ε from its ledger;
* client-level: Flower's DP wrappers (client-side clipping at the site, in float32 before the default
  float16 transport, or server-side) with Flower's accountant; ε per round equals a fresh accountant's, is
  stored in the checkpoint and continues after a resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.supercore.privacy_accounting import (
    GaussianPrivacyEvent,
    NeighboringRelation,
    PrivacyConfig,
    SamplingMethod,
)
from flwr.supercore.privacy_accounting.rdp_accountant import RdpAccountant
from flwr_utils import REPO, FlowerSandbox
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from clin_jepa.checkpoint import load_checkpoint
from clin_jepa.cli import main as cli
from clin_jepa.config import load_site_config
from clin_jepa.data.stats import Discretization
from clin_jepa.data.tasks import load_tasks
from clin_jepa.data.tokenize import build_site_tensors

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:Optimal order is the largest alpha")]
ROUNDS, STEPS, BATCH = 5, 2, 8
SITES = ("hospital_a", "hospital_b", "hospital_c")


@pytest.fixture
def flower(tmp_path):
    with FlowerSandbox(tmp_path / "flower") as fl:
        yield fl
    assert fl.survivors() == [], "Flower/Ray processes survived the test"


def synth_sites(root: Path, privacy_c: dict | None = None) -> list[Path]:
    assert cli(["synth", "--out", str(root), "--sites", "3", "--patients", "60"]) == 0
    paths = [root / f"{s}.yaml" for s in SITES]
    if privacy_c is not None:
        raw = yaml.safe_load(paths[2].read_text())
        raw["privacy"] = privacy_c
        paths[2].write_text(yaml.safe_dump(raw, sort_keys=False))
    return paths


def run_config(sites: list[Path], out: Path, **extra: object) -> dict[str, object]:
    return {"preset": "tiny", "hours": 48, "num-rounds": ROUNDS, "local-steps": STEPS, "batch-size": BATCH,
            "phase-fractions": "0.2,0.2,0.2,0.2,0.2", "site-configs": ",".join(map(str, sites)),
            "checkpoint-dir": str(out), "synth-if-missing": False, "round-timeout": 300.0, **extra}


def read_lines(out: Path) -> list[dict]:
    """The training rounds' lines (evaluation rounds, ``phase == "evaluate"``, left out)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [ln for ln in lines if ln.get("phase") != "evaluate"]


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-4000:]


def rdp_epsilon(noise: float, rate: float, steps: int, delta: float) -> float:
    acc = RDPAccountant()
    for _ in range(steps):
        acc.step(noise_multiplier=noise, sample_rate=rate)
    return acc.get_epsilon(delta)


def _configured_dp(sites: list[Path], disc: dict, fixed_noise: dict[str, float | None],
                   epsilon: float) -> dict[str, tuple[float, float]]:
    """(noise multiplier, sampling rate) each site should use, from the configuration alone: the rate is
    batch / the site's train PATIENTS (distinct subjects, counted by tokenizing its data here: the DP unit),
    the noise is the fixed one or
    Opacus' plan for ``epsilon`` over every step of the run."""
    out = {}
    for path, name in zip(sites, SITES, strict=True):
        tensors = build_site_tensors(load_site_config(path), Discretization.from_dict(disc), load_tasks(), 48,
                                     use_cache=False).subset("train")
        rate = BATCH / len(np.unique(tensors.subject_id))
        noise = fixed_noise[name] or get_noise_multiplier(target_epsilon=epsilon, target_delta=1e-5,
                                                          sample_rate=rate, steps=ROUNDS * STEPS)
        out[name] = (noise, rate)
    return out


def test_sample_level_dp_accounting_exhaustion_and_resume(tmp_path, flower):
    # hospital_c's own block: a fixed noise and a small budget, spent within the run (a and b follow the
    # run config's ε = 8, planned over all rounds)
    sites = synth_sites(tmp_path / "sites", {"enabled": True, "target_epsilon": 2.2, "delta": 1e-5,
                                             "max_grad_norm": 1.0, "noise_multiplier": 1.5})
    out = tmp_path / "ckpt"
    cfg = run_config(sites, out, **{"dp-sample-epsilon": 8.0})
    ok(flower.run(REPO, {**cfg, "stop-after": 2}, num_supernodes=3))
    ok(flower.run(REPO, {**cfg, "resume-from": str(out)}, num_supernodes=3))  # fresh client processes
    lines = read_lines(out)
    assert [ln["round"] for ln in lines] == list(range(ROUNDS + 1))
    configured = _configured_dp(sites, load_checkpoint(out / "ckpt.pt").discretization,
                                {"hospital_a": None, "hospital_b": None, "hospital_c": 1.5}, epsilon=8.0)
    trained = dict.fromkeys(SITES, 0)
    exhausted_at = None
    for ln in lines[1:]:
        assert ln["updated"]  # the run goes on with the sites that can still train
        for name in SITES:
            entry = ln["sites"][name]
            if entry["status"] == "budget-exhausted":
                assert name == "hospital_c" and "privacy budget exhausted" in entry["reason"]
                exhausted_at = exhausted_at or ln["round"]
                assert entry["dp-steps"] == trained[name] * STEPS  # nothing spent by a refused round
                continue
            assert entry["status"] == "ok", entry
            trained[name] += 1
            # an independent accountant on what was *configured*, never on what the site says it used
            noise, rate = configured[name]
            assert entry["dp-noise-multiplier"] == pytest.approx(noise, rel=1e-9)
            assert entry["dp-sample-rate"] == pytest.approx(rate, rel=1e-12)
            expected = rdp_epsilon(noise, rate, trained[name] * STEPS, 1e-5)
            assert entry["dp-epsilon"] == pytest.approx(expected, rel=1e-9)
            assert entry["dp-epsilon"] <= entry["dp-target-epsilon"]
            assert "loss" not in entry  # losses are not covered by DP: a DP site does not send them
        assert ln["privacy"]["sample_level"]["hospital_a"] == ln["sites"]["hospital_a"]["dp-epsilon"]
    assert trained["hospital_a"] == trained["hospital_b"] == ROUNDS
    last = lines[-1]["sites"]
    for name in ("hospital_a", "hospital_b"):  # the plan spends (almost exactly) the budget in the run
        assert 8.0 - 0.05 < last[name]["dp-epsilon"] <= 8.0
    # hospital_c trained until its next round would have exceeded 2.2, and stayed stopped
    assert exhausted_at is not None and 1 < exhausted_at <= ROUNDS
    c = [ln["sites"]["hospital_c"] for ln in lines[1:]]
    assert [e["status"] for e in c] == ["ok"] * (exhausted_at - 1) + ["budget-exhausted"] * (
        ROUNDS - exhausted_at + 1)
    assert rdp_epsilon(*configured["hospital_c"], exhausted_at * STEPS, 1e-5) > 2.2
    extra = load_checkpoint(out / "ckpt.pt").extra
    assert extra["accountants"]["sample_level"]["hospital_c"]["epsilon"] == c[-1]["dp-epsilon"]


def _fresh_flower_epsilon(noise: float, releases: int, n_sites: int, delta: float) -> float:
    acc = RdpAccountant(PrivacyConfig(target_delta=delta, population_size=n_sites,
                                      neighboring_relation=NeighboringRelation.ADD_OR_REMOVE_ONE,
                                      sampling_method=SamplingMethod.NO_AMPLIFICATION))
    acc.compose(GaussianPrivacyEvent(noise, n_sites, n_sites), releases)
    return acc.get_epsilon(delta)


@pytest.mark.parametrize("mode", ["client-fixed", "server-fixed"])
def test_client_level_dp_with_flower_accountant(tmp_path, flower, mode):
    sites = synth_sites(tmp_path / "sites")
    out = tmp_path / "ckpt"
    noise, clip = 0.8, 0.05
    cfg = run_config(sites, out, **{"num-rounds": 3, "dp-central": mode, "dp-noise-multiplier": noise,
                                    "dp-clipping-norm": clip})
    if mode == "client-fixed":  # also resume: the accountant continues from the checkpoint
        ok(flower.run(REPO, {**cfg, "stop-after": 2}, num_supernodes=3))
        ok(flower.run(REPO, {**cfg, "resume-from": str(out)}, num_supernodes=3))
    else:
        ok(flower.run(REPO, cfg, num_supernodes=3))
    lines = read_lines(out)[1:]
    assert [ln["round"] for ln in lines] == [1, 2, 3]
    for r, ln in enumerate(lines, start=1):
        assert ln["updated"] and ln["accepted"] == 3
        client = ln["privacy"]["client_level"]
        assert client["releases"] == r
        assert client["epsilon"] == pytest.approx(_fresh_flower_epsilon(noise, r, 3, 1e-5), rel=1e-9)
        norms = [ln["sites"][s]["update_norm"] for s in SITES]
        if mode == "client-fixed":  # the site clipped before the cast, and the bound holds after it
            assert max(norms) <= clip
        else:  # replies arrive unclipped; the server clips them before averaging
            assert max(norms) > clip
    # Opacus' RDP accountant at sampling rate 1 agrees with Flower's (same mechanism, same orders range)
    assert lines[-1]["privacy"]["client_level"]["epsilon"] == pytest.approx(
        rdp_epsilon(noise, 1.0, 3, 1e-5), rel=0.05)
    stored = load_checkpoint(out / "ckpt.pt").extra["accountants"]["client_level"]
    assert sum(c["count"] for c in stored["compositions"]) == 3
