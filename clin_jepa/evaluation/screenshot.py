"""Headless-browser check of an HTML report: Chromium (from the OS packages) draws it into a PNG.

Used by ``bench/report_screenshot.py`` and by a test that skips where no Chromium is installed; nothing
in a run needs a browser.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The first Chromium-like browser on PATH, or None."""
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def screenshot(browser: str, html: Path, out: Path, width: int = 1280, height: int = 4000,
               timeout: float = 120) -> Path:
    """Render ``html`` (a local file) at ``width`` x ``height`` CSS pixels into ``out`` (PNG)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="clin-jepa-chromium-") as profile:
        # --no-sandbox: Chromium refuses to start its sandbox as root (containers, CI)
        cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={out.resolve()}", html.resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"{browser} could not render {html} (exit {done.returncode}): "
                           f"{done.stderr[-2000:]}")
    return out


def ink_share(png: Path) -> float:
    """Share of pixels that are not (near) white: how much of the page is drawn."""
    from matplotlib.image import imread

    rgb = imread(png)[..., :3]
    return float(np.mean(rgb.min(axis=-1) < 0.95))
