"""Where the networks run: device choice, mixed precision and optional ``torch.compile``, in one place.

CPU is the default everywhere and nothing here needs a GPU to import or test. ``cuda`` is a promise the
machine must keep: asking for it without a visible CUDA device is a :class:`ConfigError` naming the
setting that asked (never a CUDA traceback in the middle of a round); ``auto`` takes CUDA when present.
On CUDA, training runs under bf16 autocast (``clin_jepa.train.train_steps``) and attention is
``scaled_dot_product_attention``, which dispatches to the flash / memory-efficient kernels there.
"""

from __future__ import annotations

import contextlib
import re

import torch
from torch import nn

from clin_jepa.errors import ConfigError

DEVICE_NAMES = ("cpu", "cuda", "auto")
_CUDA_INDEX = re.compile(r"cuda:(\d+)")


def resolve_device(name: str, setting: str = "device") -> torch.device:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` -> a usable ``torch.device``.

    ``setting`` names where the value came from (e.g. ``training.device`` of a site config) so the
    error says what to change. In a Flower simulation, workers only see a GPU when the federation
    gives them one (``client-resources-num-gpus``); the message says so.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    match = _CUDA_INDEX.fullmatch(name)
    if name != "cuda" and match is None:
        raise ConfigError(f"{setting}: {name!r} is not one of {list(DEVICE_NAMES)} (or cuda:N)")
    if not torch.cuda.is_available():
        raise ConfigError(
            f"{setting}: {name} was requested but this process sees no CUDA device (torch "
            f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}). Use device: cpu or auto, "
            "install a CUDA build of torch, or, in a Flower simulation, give each ClientApp a GPU share "
            "(flwr run . --federation-config 'client-resources-num-gpus=0.5').")
    if match is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"{setting}: {name} does not exist; this process sees "
                          f"{torch.cuda.device_count()} CUDA device(s)")
    return torch.device(name)


def autocast(device: torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (weights and optimizer stay fp32); a no-op elsewhere, where bf16 matmuls
    are slower than fp32 on most CPUs."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def compile_modules(modules: dict[str, nn.Module] | list[nn.Module]) -> None:
    """``torch.compile`` each module in place (``nn.Module.compile``): parameter names, state dicts and
    hence checkpoints and wire names are unchanged, so compiled and eager runs exchange weights freely.
    Compilation itself is lazy (first forward)."""
    for module in (modules.values() if isinstance(modules, dict) else modules):
        module.compile()
