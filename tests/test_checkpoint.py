"""Checkpoints rebuild the model alone, carry their metadata, and refuse corrupt or tampered files."""

import numpy as np
import pytest
import torch

from clin_jepa.checkpoint import Checkpoint, checkpoint_digest, load_checkpoint, save_checkpoint
from clin_jepa.curriculum import CurriculumConfig
from clin_jepa.errors import CheckpointError
from clin_jepa.models import ClinJEPA, ModelConfig, preset
from clin_jepa.models.testing import random_batch
from clin_jepa.train import build_optimizer


def _checkpoint(tmp_path):
    torch.manual_seed(0)
    model = ClinJEPA(preset("tiny", n_concepts=5, n_treatments=2))
    opt = build_optimizer(model, CurriculumConfig())
    loss = model.predictor(model.encoder(random_batch(model.cfg, 2, 6)), random_batch(model.cfg, 2, 6)).sum()
    loss.backward()
    opt.step()
    disc = {"concepts": ["hr", "map"], "n_bins": 10, "edges": {"hr": np.linspace(50, 120, 9)}}
    ckpt = Checkpoint.from_model(model, curriculum=CurriculumConfig().to_dict(), discretization=disc,
                                 step=12, round=3, phase="joint", optimizer=opt.state_dict(),
                                 metrics={"loss": 0.5}, extra={"accountant": {"history": [[1.1, 0.01, 5]]}})
    path = tmp_path / "ckpt.pt"
    digest = save_checkpoint(path, ckpt)
    return model, opt, path, digest


def test_roundtrip_rebuilds_model_from_file_alone(tmp_path):
    model, opt, path, digest = _checkpoint(tmp_path)
    loaded = load_checkpoint(path)
    rebuilt = loaded.build_model()
    assert loaded.model_config == model.cfg
    for a, b in zip(model.state_dict().values(), rebuilt.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert (loaded.step, loaded.round, loaded.phase) == (12, 3, "joint")
    assert CurriculumConfig.from_dict(loaded.curriculum) == CurriculumConfig()
    assert loaded.discretization["edges"]["hr"] == pytest.approx(list(np.linspace(50, 120, 9)))
    assert loaded.extra == {"accountant": {"history": [[1.1, 0.01, 5]]}}
    opt2 = build_optimizer(rebuilt, CurriculumConfig())
    opt2.load_state_dict(loaded.optimizer)
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert checkpoint_digest(path) == digest
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp files left behind


def test_flipped_byte_is_detected(tmp_path):
    _, _, path, _ = _checkpoint(tmp_path)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_checkpoint(path)


def test_truncated_missing_and_foreign_files(tmp_path):
    _, _, path, _ = _checkpoint(tmp_path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot be decoded"):
        load_checkpoint(path, verify=False)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": {}}, foreign)
    with pytest.raises(CheckpointError, match="not a Clin-JEPA checkpoint"):
        load_checkpoint(foreign)


@pytest.mark.parametrize("key,stored", [("encoder_clock", True), ("horizon_heads", False)])
def test_checkpoint_from_before_a_model_switch_keeps_what_it_had(tmp_path, monkeypatch, key, stored):
    """A checkpoint written before ``model.encoder_clock`` (``model.horizon_heads``) existed had the clock
    in E (a horizon embedding): it loads as such, weights and all, although new models differ."""
    model = ClinJEPA(preset("tiny", n_concepts=5, n_treatments=2, **{key: stored}))
    plain = ModelConfig.to_dict
    monkeypatch.setattr(ModelConfig, "to_dict",
                        lambda self: {k: v for k, v in plain(self).items() if k != key})
    path = tmp_path / "old.pt"
    save_checkpoint(path, Checkpoint.from_model(model, curriculum=CurriculumConfig().to_dict(),
                                                discretization={}, step=0, round=0, phase="warmup"))
    monkeypatch.undo()
    loaded = load_checkpoint(path)
    assert getattr(loaded.model_config, key) == stored != getattr(preset("tiny"), key)
    assert loaded.curriculum["finalize_lr"] == CurriculumConfig().finalize_lr  # a key it has is kept
    rebuilt = loaded.build_model()
    for (name, mine), theirs in zip(rebuilt.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(mine, theirs), name


def test_checkpoint_from_before_finalize_lr_keeps_its_schedule(tmp_path):
    """Runs from before ``curriculum.finalize_lr`` kept the cosine through the finalize phase, so a
    resumed one must too, although new runs restart it."""
    model = ClinJEPA(preset("tiny", n_concepts=5, n_treatments=2))
    old = {k: v for k, v in CurriculumConfig().to_dict().items()
           if k not in ("finalize_lr", "finalize_rollout_steps")}
    path = tmp_path / "old.pt"
    save_checkpoint(path, Checkpoint.from_model(model, curriculum=old, discretization={}, step=0, round=0,
                                                phase="warmup"))
    resumed = CurriculumConfig.from_dict(load_checkpoint(path).curriculum)
    assert resumed.finalize_lr == 0.0 and CurriculumConfig().finalize_lr > 0
    assert resumed.finalize_rollout_steps == 0 and CurriculumConfig().finalize_rollout_steps > 0
