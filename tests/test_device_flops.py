"""Device selection and FLOP counting, on the CPU this suite always has (a GPU is never required)."""

from __future__ import annotations

import pytest
import torch

from clin_jepa.curriculum import CurriculumConfig, phase_at
from clin_jepa.device import autocast, resolve_device
from clin_jepa.errors import ConfigError
from clin_jepa.flops import analytic_step_flops, matmul_params, measured_step_flops, peak_flops
from clin_jepa.models import ClinJEPA, preset
from clin_jepa.models.testing import random_batch

NO_CUDA = not torch.cuda.is_available()


def test_cpu_and_auto_resolve_without_a_gpu():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_a_config_error_naming_the_setting(name):
    expected = r"training\.device: cuda.*no CUDA device.*client-resources-num-gpus"
    with pytest.raises(ConfigError, match=expected):
        resolve_device(name, "training.device")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_refused(name):
    with pytest.raises(ConfigError, match="is not one of"):
        resolve_device(name)


def test_autocast_is_a_no_op_on_cpu():
    with autocast(torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


@pytest.mark.parametrize("name,step,heads", [("tiny", 0, False), ("tiny", 20, False), ("tiny", 20, True)])
def test_flop_counter_agrees_with_the_closed_form(name, step, heads):
    """FlopCounterMode on a real step = the closed form without attention (CPU attention is not counted)
    up to the input-gradient matmuls a frozen input skips (< 2 %)."""
    torch.manual_seed(0)
    cfg = preset(name, horizon_heads=heads)
    model = ClinJEPA(cfg)
    phase = phase_at(step, 100, CurriculumConfig())
    batch = random_batch(cfg, 4, 24, seed=1)
    measured = measured_step_flops(model, batch, phase)
    closed = analytic_step_flops(cfg, 4, 24, phase.trains_encoder, attention=False)
    assert measured <= closed and (closed - measured) / closed < 0.02, (measured, closed)
    assert all(p.grad is None for p in model.parameters())
    # training E costs its backward too; attention adds 4 T^2 d per layer and sequence
    assert analytic_step_flops(cfg, 4, 24, True) > analytic_step_flops(cfg, 4, 24, False)
    with_attn = analytic_step_flops(cfg, 4, 24, phase.trains_encoder)
    n_enc = 2 if not phase.trains_encoder else 4
    pred_passes = 2 + (0 if heads else len(cfg.horizons))  # rollout steps + one per look-ahead horizon
    assert with_attn - closed == 4 * 4 * 24 * 24 * (n_enc * cfg.enc_layers * cfg.d_enc
                                                    + 3 * pred_passes * cfg.pred_layers * cfg.d_pred)


def test_flops_scale_with_tokens_and_params():
    cfg = preset("tiny")
    one = analytic_step_flops(cfg, 2, 24, True, attention=False)
    assert analytic_step_flops(cfg, 4, 24, True, attention=False) == 2 * one
    with torch.device("meta"):
        model = ClinJEPA(preset("base"))
    # the base preset's predictor is the paper's ~92 M parameters; almost all of them multiply
    assert matmul_params(model.predictor) > 0.95 * sum(p.numel() for p in model.predictor.parameters())


def test_no_peak_figure_for_cpu():
    assert peak_flops(torch.device("cpu")) is None


@pytest.mark.skipif(not NO_CUDA, reason="checks the refusal on a machine without CUDA")
def test_commands_refuse_cuda_without_a_traceback(tmp_path, capsys):
    from clin_jepa.cli import main
    from clin_jepa.trainer import resolve_device as trainer_device

    code = main(["evaluate", str(tmp_path / "none.pt"), "--sites", str(tmp_path / "s.yaml"),
                 "--out", str(tmp_path / "out"), "--device", "cuda", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--device: cuda was requested" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
    with pytest.raises(ConfigError, match=r"train\.device: cuda"):
        trainer_device("cuda")
