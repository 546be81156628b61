"""Centralized trainer on synthetic hospitals: CLI, metrics, checkpoints, exact resume, learning."""

import json

import pytest
import torch

from clin_jepa.checkpoint import load_checkpoint
from clin_jepa.cli import main
from clin_jepa.curriculum import CurriculumConfig
from clin_jepa.data.synth import synthesize
from clin_jepa.trainer import TrainerConfig, train_centralized


@pytest.fixture(scope="module")
def sites(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    return [str(o.config) for o in synthesize(root, n_sites=2, n_patients=30, seed=3)]


pytestmark = pytest.mark.usefixtures("one_thread")


def _tcfg(**kw):
    return TrainerConfig(**{"preset": "tiny", "steps": 12, "batch_size": 8, "log_every": 3, "hours": 36,
                            **kw})


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_resume_continues_exactly(sites, tmp_path):
    ccfg = CurriculumConfig(fractions=(0.25, 0.25, 0.25, 0.0, 0.25))
    train_centralized(sites, tmp_path / "straight", _tcfg(), ccfg, progress=False)
    train_centralized(sites, tmp_path / "split", _tcfg(), ccfg, progress=False, stop_at=7)
    assert load_checkpoint(tmp_path / "split" / "ckpt.pt").step == 7
    train_centralized(sites, tmp_path / "split", resume=True, progress=False)
    a, b = load_checkpoint(tmp_path / "straight" / "ckpt.pt"), load_checkpoint(tmp_path / "split" / "ckpt.pt")
    assert a.step == b.step == 12 and a.phase == b.phase == "finalize"
    for group in a.weights:
        for k, v in a.weights[group].items():
            torch.testing.assert_close(v, b.weights[group][k], rtol=1e-6, atol=1e-7)
    ra, rb = _records(tmp_path / "straight" / "metrics.jsonl"), _records(tmp_path / "split" / "metrics.jsonl")
    assert [r["step"] for r in ra] == [3, 6, 9, 12]
    assert [r["step"] for r in rb] == [3, 6, 7, 9, 12]  # the interrupted call logged its last step
    assert rb[-1]["loss"] == pytest.approx(ra[-1]["loss"], rel=1e-5)


def test_checkpoint_rebuilds_model_for_evaluation(sites, tmp_path):
    train_centralized(sites[:1], tmp_path, _tcfg(steps=3), progress=False)
    ck = load_checkpoint(tmp_path / "ckpt.pt")
    disc = ck.load_discretization()
    model = ck.build_model()
    assert model.cfg.n_concepts == len(disc.concepts) and model.cfg.n_bins == disc.n_bins
    assert ck.tasks and ck.extra["sites"] == ["hospital_a"]
    assert TrainerConfig.from_dict(ck.extra["trainer"]) == _tcfg(steps=3)


def test_cli_train_and_resume_refuses_new_settings(sites, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--sites", *sites, "--out", str(out), "--preset", "tiny", "--steps", "4",
               "--batch-size", "4", "--hours", "30", "--log-every", "2", "--no-progress"])
    assert rc == 0 and (out / "ckpt.pt").is_file()
    assert [r["step"] for r in _records(out / "metrics.jsonl")] == [2, 4]
    assert main(["train", "--sites", *sites, "--resume", str(out), "--steps", "8"]) == 2
    assert "--steps" in capsys.readouterr().err
    assert main(["train", "--sites", *sites, "--resume", str(tmp_path / "nothing")]) == 2
    assert main(["train", "--sites", *sites, "--out", str(out), "--preset", "tiny"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_curriculum_learns_without_collapse(sites, tmp_path):
    train_centralized(sites, tmp_path, _tcfg(steps=80, batch_size=12, log_every=10, hours=36),
                      CurriculumConfig(lr=2e-3), progress=False)
    records = _records(tmp_path / "metrics.jsonl")
    record_first, record_last = records[0], records[-1]
    assert record_last["loss_step1"] < 0.8 * record_first["loss_step1"]
    assert min(r["emb_std_min"] for r in records) > 0.05
    assert record_last["eff_rank"] > 4
