"""Helpers shared by the federation benchmarks: synthetic hospitals, one `flwr run` on a private local
SuperLink (``clin_jepa.localrun``), its metrics lines, and resident memory of a process tree from /proc.

Every process a benchmark starts is stopped by PID when it ends (``LocalFlower.close``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from clin_jepa.localrun import LocalFlower, descendants  # noqa: E402


def load_average() -> str:
    """The 1/5/15-minute load averages and the core count: every figure is read against them."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.1f}/{five:.1f}/{fifteen:.1f} on {os.cpu_count()} cores"


def make_hospitals(out: Path, n_sites: int, patients: int, seed: int = 0) -> list[Path]:
    """``n_sites`` synthetic hospitals under ``out`` (reused if already there); returns their site configs.

    The generator names at most 26 hospitals per call; beyond that, further batches are generated with
    other seeds and their sites renamed ``<name>_<batch>`` so every site name stays unique.
    """
    from clin_jepa.data.synth import synthesize
    from clin_jepa.data.synth.profiles import MAX_SITES

    configs: list[Path] = []
    batch = 0
    while len(configs) < n_sites:
        n = min(MAX_SITES, n_sites - len(configs))
        folder = out / f"batch{batch}" if n_sites > MAX_SITES else out
        done = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
        if len(done) != n:
            synthesize(folder, n, patients, seed + batch, force=True)
            done = sorted(folder.glob("*.yaml"))
        for path in done:
            configs.append(_renamed(path, f"_{batch}", out / "renamed") if n_sites > MAX_SITES else path)
        batch += 1
    return configs


def _renamed(path: Path, suffix: str, folder: Path) -> Path:
    """A copy of a site config in ``folder`` whose site name carries ``suffix`` (own state folder)."""
    raw = yaml.safe_load(path.read_text())
    raw["site"] = f"{raw['site']}{suffix}"
    raw["data"]["path"] = str((path.parent / raw["data"]["path"]).resolve())
    raw["state_dir"] = str((folder / "state" / raw["site"]).resolve())
    folder.mkdir(parents=True, exist_ok=True)
    new = folder / f"{raw['site']}.yaml"
    new.write_text(yaml.safe_dump(raw, sort_keys=False))
    return new


def clear_caches(configs: list[Path]) -> None:
    """Remove the sites' prepared-tensor caches and per-run optimizer state (a cold start)."""
    from clin_jepa.config import load_site_config

    for path in configs:
        state = Path(load_site_config(path).state_dir)
        for sub in ("cache", "federated"):
            for f in sorted((state / sub).rglob("*"), reverse=True) if (state / sub).exists() else []:
                f.unlink() if f.is_file() else f.rmdir()


@dataclass
class RssSampler:
    """Samples the memory of ``root``'s process tree (``root`` included) every ``every`` seconds on a
    thread; ``samples`` holds (seconds since start, summed PSS bytes, lines in ``watch`` then).

    PSS (proportional set size) splits each shared page among the processes mapping it, so the sum over
    a tree of processes sharing memory (Ray's object store, forked workers) counts every page once;
    a plain RSS sum would count shared pages once per process."""

    root: int
    every: float = 0.5
    watch: Path | None = None
    samples: list[tuple[float, int, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._t0 = time.monotonic()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while True:
            lines = 0
            if self.watch is not None and self.watch.exists():
                lines = self.watch.read_bytes().count(b"\n")
            self.samples.append((time.monotonic() - self._t0, tree_pss(self.root), lines))
            if self._stop.wait(self.every):
                return

    def peak(self) -> int:
        return max((b for _, b, _ in self.samples), default=0)

    def peak_while(self, lines: int) -> int:
        """Peak while ``watch`` had exactly ``lines`` lines (e.g. during the round after line ``lines``)."""
        return max((b for _, b, n in self.samples if n == lines), default=0)


def tree_pss(root: int) -> int:
    """Proportional set size, in bytes, of ``root`` and all its descendants (``/proc/<pid>/smaps_rollup``)."""
    total = 0
    for pid in {root} | descendants(root):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        break
        except (OSError, IndexError, ValueError):
            continue
    return total


@dataclass
class FlowerRun:
    wall_s: float
    returncode: int
    output: str
    lines: list[dict]
    rss: RssSampler | None = None


def flower_run(workdir: Path, run_config: dict[str, object], num_supernodes: int, timeout: float = 1800,
               sample_rss: bool = False, federation: dict[str, object] | None = None) -> FlowerRun:
    """One `flwr run` of this project on a fresh private SuperLink in ``workdir`` (its own FLWR_HOME);
    ``wall_s`` times `flwr run` alone (from invocation to its exit: simulation start-up, Ray actors,
    every round, shutdown), not the SuperLink's own start. Everything started is stopped afterwards."""
    workdir.mkdir(parents=True, exist_ok=True)
    out = Path(str(run_config["checkpoint-dir"]))
    with LocalFlower(workdir / "flwr_home", ROOT, workdir / "superlink.log") as fl:
        assert fl.superlink is not None
        sampler = RssSampler(fl.superlink.pid, watch=out / "metrics.jsonl") if sample_rss else None
        if sampler:
            sampler.__enter__()
        t0 = time.perf_counter()
        try:
            proc = fl.run(ROOT, run_config, num_supernodes=num_supernodes, timeout=timeout,
                          federation=federation)
        finally:
            wall = time.perf_counter() - t0
            if sampler:
                sampler.__exit__()
    lines = []
    if (out / "metrics.jsonl").exists():
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return FlowerRun(wall, proc.returncode, proc.stdout, lines, sampler)


def check(run: FlowerRun, rounds: int) -> None:
    """Stop the benchmark with the run's output tail if it did not complete every round."""
    if run.returncode != 0 or not run.lines or run.lines[-1].get("round") != rounds:
        sys.exit(f"flwr run failed (exit {run.returncode}):\n{run.output[-4000:]}")


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    """Wall time and output of ``clin-jepa ARGS`` in a fresh interpreter (imports counted, as for
    `flwr run`)."""
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "clin_jepa.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, **(env or {})})
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"clin-jepa {' '.join(args)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return wall, proc.stdout + proc.stderr
