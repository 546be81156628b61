"""bench/gpu_check.py where there is no GPU (it must say so and succeed), and its trimming of a carried
wheel. On a GPU machine the script itself is the test (bench/README.md § GPU)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import gpu_check  # noqa: E402


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_without_cuda_it_skips_clearly_and_succeeds(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--wheels",
                           str(tmp_path / "none"), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("no CUDA: skipped")
    assert not (tmp_path / "out").exists()  # nothing was installed, run or written


def test_trimmed_wheel_drops_the_unused_parts_and_their_record_lines(tmp_path):
    wheel = tmp_path / "ray-0-cp312-cp312-manylinux2014_x86_64.whl"
    keep = {"ray/__init__.py": b"x = 1\n", "ray/_raylet.so": b"\0" * 1000}
    drop = {"ray/jars/ray_dist.jar": b"j" * 1000, "ray/rllib/a.py": b"",
            "ray/dashboard/client/build/x.js": b""}
    record = "".join(f"{n},sha256=x,{len(d)}\n" for n, d in {**keep, **drop}.items())
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in {**keep, **drop}.items():
            z.writestr(name, data)
        z.writestr("ray-0.dist-info/RECORD", record)
    gpu_check.trim_wheel(wheel, gpu_check.RAY_UNUSED)
    with zipfile.ZipFile(wheel) as z:
        assert set(z.namelist()) == {*keep, "ray-0.dist-info/RECORD"}
        assert z.read("ray/_raylet.so") == keep["ray/_raylet.so"]
        lines = z.read("ray-0.dist-info/RECORD").decode().splitlines()
        assert sorted(line.split(",")[0] for line in lines) == sorted(keep)
        assert all(i.compress_type == zipfile.ZIP_LZMA for i in z.infolist())
