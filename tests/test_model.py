"""Encoder / predictor shapes, causality, Opacus compatibility and per-group state exchange."""

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator

from clin_jepa.errors import CheckpointError, ConfigError
from clin_jepa.losses import LossConfig, jepa_loss, layer_normed_targets, model_terms
from clin_jepa.models import GROUPS, ClinJEPA, ModelConfig, get_group_state, preset, set_group_state
from clin_jepa.models.predictor import ALL_HORIZONS
from clin_jepa.models.testing import random_batch

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", ["tiny", "wide", "small"])
def test_shapes_real(name):
    cfg = preset(name, n_concepts=7, n_treatments=3)
    model = ClinJEPA(cfg)
    batch = random_batch(cfg, 3, 20)
    z = model.encoder(batch)
    assert z.shape == (3, 20, cfg.d_enc)
    assert model.predictor(z, batch).shape == (3, 20, cfg.d_enc)
    assert torch.isfinite(z).all()


def test_base_preset_on_meta_device():
    cfg = preset("base")
    with torch.device("meta"):
        model = ClinJEPA(cfg)
        batch = {k: v.to("meta") for k, v in random_batch(preset("tiny"), 2, 72).items()}
        z = model.encoder(batch)
        out = model.predictor(z, batch)
    assert z.shape == out.shape == (2, 72, cfg.d_enc)
    n_pred = sum(p.numel() for p in model.predictor.parameters())
    assert abs(n_pred - 92e6) / 92e6 < 0.03, n_pred
    assert sum(p.numel() for p in preset_model("small").parameters()) < n_pred / 50


def preset_model(name):
    with torch.device("meta"):
        return ClinJEPA(preset(name))


def test_target_encoder_is_frozen_copy():
    model = ClinJEPA(preset("tiny"))
    for (n1, p1), (n2, p2) in zip(model.encoder.named_parameters(), model.target_encoder.named_parameters(),
                                  strict=True):
        assert n1 == n2 and torch.equal(p1, p2)
        assert p1.requires_grad and not p2.requires_grad
        assert p1.data_ptr() != p2.data_ptr()


@pytest.mark.parametrize("level_input", [False, True])
def test_encoder_and_predictor_are_causal(level_input):
    torch.manual_seed(0)
    cfg = preset("tiny", level_input=level_input)
    model = ClinJEPA(cfg)
    batch = random_batch(cfg, 2, 16)
    z = model.encoder(batch)
    p = model.predictor(z, batch)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["bins"][:, 10:] = torch.randint(1, cfg.n_bins + 1, changed["bins"][:, 10:].shape)
    changed["treat"][:, 11:] = 1.0 - changed["treat"][:, 11:]
    z2 = model.encoder(changed)
    torch.testing.assert_close(z2[:, :10], z[:, :10])
    assert not torch.allclose(z2[:, 10:], z[:, 10:])
    p2 = model.predictor(z2, changed)
    # row t sees latents <= t and the treatments of hour t+1: rows < 10 are untouched
    torch.testing.assert_close(p2[:, :10], p[:, :10])
    assert not torch.allclose(p2[:, 10], p[:, 10])


def test_level_input_reaches_the_latent():
    """``model.level_input`` wires the ordinal level map into the forward pass (it gets a gradient); the
    ablation ``level_input=False`` has no such parameters."""
    torch.manual_seed(0)
    cfg = preset("tiny", level_input=True)
    enc = ClinJEPA(cfg).encoder
    enc(random_batch(cfg, 2, 8)).square().sum().backward()
    assert enc.level.weight.grad is not None and enc.level.weight.grad.abs().sum() > 0
    assert ClinJEPA(preset("tiny", level_input=False)).encoder.level is None


def test_encoder_clock_switch():
    """``encoder_clock=False``: the clock of day does not reach ``E`` (age still does)."""
    torch.manual_seed(0)
    for clock in (True, False):
        enc = ClinJEPA(preset("tiny", encoder_clock=clock)).encoder
        batch = random_batch(enc.cfg, 2, 8)
        clocked = {**batch, "time": batch["time"].clone()}
        clocked["time"][..., 1:3] += 0.5
        moved = not torch.allclose(enc(clocked), enc(batch))
        assert moved is clock
        aged = {**batch, "time": batch["time"].clone()}
        aged["time"][..., 3] += 1.0
        assert not torch.allclose(enc(aged), enc(batch))


def test_too_many_hours_is_a_clear_error():
    model = ClinJEPA(preset("tiny", max_hours=16))
    with pytest.raises(ConfigError, match="max_hours=16"):
        model.encoder(random_batch(model.cfg, 1, 17))


def test_unobserved_cells_ignore_value_rows():
    cfg = preset("tiny")
    model = ClinJEPA(cfg)
    batch = random_batch(cfg, 2, 8)
    before = model.encoder(batch)
    with torch.no_grad():  # rows of bin 0 (unobserved) must not matter
        model.encoder.values.weight[:: cfg.n_bins + 1] += 5.0
    torch.testing.assert_close(model.encoder(batch), before)


@pytest.mark.parametrize("group", ["encoder", "predictor"])
def test_opacus_module_validator(group):
    module = getattr(ClinJEPA(preset("tiny")), group)
    assert ModuleValidator.validate(module, strict=False) == []
    ModuleValidator.validate(module, strict=True)


@pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")
@pytest.mark.parametrize("heads", [False, True])
def test_opacus_per_sample_gradients_are_per_sample(heads):
    """Real Opacus hooks: the per-sample gradient of sample i equals the gradient of i's loss alone,
    so no term of the loss mixes samples (DP-SGD clipping stays valid)."""
    torch.manual_seed(0)
    cfg = preset("tiny", d_enc=32, d_pred=32, enc_heads=2, pred_heads=2, horizon_heads=heads)
    model = ClinJEPA(cfg)
    batch = random_batch(cfg, 4, 12)
    with torch.no_grad():
        target = layer_normed_targets(model.target_encoder(batch))
    enc, pred = GradSampleModule(model.encoder), GradSampleModule(model.predictor)
    loss, _ = jepa_loss(pred, enc(batch), target, batch, LossConfig(collapse_floor=2.0, collapse_weight=1.0),
                        **model_terms(cfg, batch))
    loss.backward()
    i = 2
    one = {k: v[i: i + 1] for k, v in batch.items()}
    expected = {id(p): p.grad_sample[i].clone() for p in model.online_parameters()
                if getattr(p, "grad_sample", None) is not None}
    enc.zero_grad(set_to_none=True)
    pred.zero_grad(set_to_none=True)
    loss_i, _ = jepa_loss(model.predictor, model.encoder(one), target[i: i + 1], one,
                          LossConfig(collapse_floor=2.0, collapse_weight=1.0), **model_terms(cfg, one))
    loss_i.backward()
    checked = 0
    for p in model.online_parameters():
        assert id(p) in expected, "Opacus computed no per-sample gradient for a parameter"
        # loss_reduction="mean": Opacus rescales so grad_sample[i] is the gradient of sample i's own loss
        torch.testing.assert_close(expected[id(p)], p.grad, rtol=1e-3, atol=1e-6)
        checked += 1
    assert checked == len(model.online_parameters())


def test_group_state_roundtrip_and_mismatch():
    a, b = ClinJEPA(preset("tiny")), ClinJEPA(preset("tiny"))
    for g in GROUPS:
        set_group_state(b, g, get_group_state(a, g))
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    wrong = get_group_state(ClinJEPA(preset("small")), "predictor")
    with pytest.raises(CheckpointError, match="wrong shape"):
        set_group_state(a, "predictor", wrong)
    with pytest.raises(CheckpointError, match="unknown parameter group"):
        get_group_state(a, "decoder")


def test_config_validation_and_dict_roundtrip():
    cfg = preset("small", n_concepts=5)
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="divisible"):
        preset("tiny", d_enc=30)
    with pytest.raises(ConfigError, match="unknown"):
        preset("huge")
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_dict({"width": 3})


def test_horizon_heads_give_every_horizon_from_one_pass():
    """``horizon_heads``: one pass returns the next hour and each look-ahead; asking for one horizon gives
    the same rows, the loss is the same whether it shares the pass or not, and no horizon embedding
    is built. Rows stay causal."""
    torch.manual_seed(0)
    cfg = preset("tiny", horizon_heads=True)
    model = ClinJEPA(cfg)
    assert model.predictor.horizon is None and model.predictor.ahead is not None
    batch = random_batch(cfg, 3, 16)
    z = model.encoder(batch)
    every = model.predictor(z, batch, horizon=ALL_HORIZONS)
    assert every.shape == (3, 16, 1 + len(cfg.horizons), cfg.d_enc)
    for i in range(1 + len(cfg.horizons)):
        torch.testing.assert_close(model.predictor(z, batch, horizon=i), every[:, :, i])
    target = layer_normed_targets(model.target_encoder(batch)).detach()
    shared, parts = jepa_loss(model.predictor, z, target, batch, LossConfig(), **model_terms(cfg, batch))
    apart, _ = jepa_loss(model.predictor, z, target, batch, LossConfig(),
                         **{**model_terms(cfg, batch), "horizon_heads": False})  # one pass per horizon
    torch.testing.assert_close(shared, apart)
    assert float(parts["loss_ahead"]) > 0
    changed = {**batch, "bins": batch["bins"].clone()}
    changed["bins"][:, 10:] = torch.randint(1, cfg.n_bins + 1, changed["bins"][:, 10:].shape)
    moved = model.predictor(model.encoder(changed), changed, horizon=ALL_HORIZONS)
    torch.testing.assert_close(moved[:, :10], every[:, :10])
    assert not torch.allclose(moved[:, 10:], every[:, 10:])
    empty = {k: v[:0] for k, v in batch.items()}  # an empty Poisson batch (DP-SGD) still steps
    assert model.predictor(model.encoder(empty), empty, horizon=ALL_HORIZONS).shape == (0, 16, 4, cfg.d_enc)
