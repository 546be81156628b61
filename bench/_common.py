"""Helpers shared by the federation benchmarks: synthetic hospitals, one `flwr run` on a private local
SuperLink (``clin_jepa.localrun``), its metrics lines, and resident memory of a process tree from /proc.

Every process a benchmark starts is stopped by PID when it ends (``LocalFlower.close``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
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
        lines = [ln for ln in lines if ln.get("phase") != "evaluate"]  # training rounds only
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


# ---- training and evaluation runs shared by compare.py and learning.py ------------------------------------
CLI = [sys.executable, "-m", "clin_jepa.cli"]


def run_arguments(p: argparse.ArgumentParser, out: str, patients: int, steps: int) -> None:
    """The options every seeded training benchmark shares (data, budget, seeds, parallelism, evaluation)."""
    p.add_argument("--out", default=out, type=Path)
    p.add_argument("--sites", type=int, default=3)
    p.add_argument("--patients", type=int, default=patients, help="subjects per synthetic hospital")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the synthetic hospitals")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="init seeds (and GRU seeds)")
    p.add_argument("--steps", type=int, default=steps, help="optimizer steps of every run")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--preset", default="wide")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=2, help="training runs in parallel (one torch thread each)")
    p.add_argument("--bootstrap", type=int, default=200)
    p.add_argument("--gru-epochs", type=int, default=60)
    p.add_argument("--federated-timeout", type=float, default=3600, help="seconds per Flower run")
    p.add_argument("--local-steps", type=int, default=10, help="per-site steps per federated round")
    p.add_argument("--no-local", action="store_true", help="skip the local-only runs")


def sh(cmd: list, log: Path | None = None) -> None:
    """Run a command with one torch thread; output to ``log`` (or the console); a failure stops the
    benchmark with the log's tail. Niceness is inherited: a benchmark lowers its own priority once."""
    cmd = [str(c) for c in cmd]
    print("$", " ".join(cmd), flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    if log is None:
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as fh:
        res = subprocess.run(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    if res.returncode:
        sys.exit(f"failed ({res.returncode}): {' '.join(cmd)}\n--- {log} ---\n{log.read_text()[-3000:]}")


def synth_sites(data: Path, n_sites: int, patients: int, seed: int) -> list[Path]:
    """``clin-jepa synth`` into ``data`` unless it already holds ``n_sites`` hospitals of ``patients``."""
    configs = sorted(data.glob("*.yaml"))
    stamp = data / "synth.json"
    want = {"sites": n_sites, "patients": patients, "seed": seed}
    if len(configs) != n_sites or not stamp.is_file() or json.loads(stamp.read_text()) != want:
        sh([*CLI, "synth", "--out", data, "--sites", n_sites, "--patients", patients, "--seed", seed,
            "--force"])
        stamp.write_text(json.dumps(want))
        configs = sorted(data.glob("*.yaml"))
    return configs


def train_finished(run: Path, steps: int) -> bool:
    """``run/ckpt.pt`` is a checkpoint that reached its own step count, and that count is ``steps``."""
    from clin_jepa.checkpoint import load_checkpoint
    from clin_jepa.errors import ClinJepaError

    if not (run / "ckpt.pt").is_file():
        return False
    try:
        ck = load_checkpoint(run / "ckpt.pt")
    except ClinJepaError:
        return False
    return ck.step == steps and (ck.extra.get("trainer") or {}).get("steps") == steps


@dataclass(frozen=True)
class TrainJob:
    """One `clin-jepa train` run; ``args`` are extra train flags (a model variant's)."""

    label: str
    sites: tuple[Path, ...]
    run: Path
    steps: int
    seed: int
    mode: str = "curriculum"
    args: tuple[str, ...] = ()

    def command(self, preset: str, batch_size: int, device: str) -> list:
        return [*CLI, "train", "--sites", *self.sites, "--out", self.run, "--mode", self.mode, "--steps",
                self.steps, "--batch-size", batch_size, "--preset", preset, "--seed", self.seed, "--device",
                device, "--log-every", max(1, self.steps // 10), "--no-progress", *self.args]


def train_all(jobs: list[TrainJob], preset: str, batch_size: int, device: str, logs: Path,
              parallel: int) -> dict[str, Path]:
    """label -> checkpoint of every job; a finished run of the same command (steps, flags) is reused,
    anything else retrained. Code changes are not detected: use a new OUT folder for a new model version.
    At most ``parallel`` runs at once, each with one torch thread."""

    def one(job: TrainJob) -> tuple[str, Path]:
        cmd = [str(c) for c in job.command(preset, batch_size, device)]
        stamp = job.run / "bench_command.json"  # other flags (a variant's) make another run
        if train_finished(job.run, job.steps) and stamp.is_file() and json.loads(stamp.read_text()) == cmd:
            print(f"reuse {job.run}\n", end="", flush=True)  # one write: jobs run on threads
        else:
            shutil.rmtree(job.run, ignore_errors=True)
            start = time.perf_counter()
            sh(cmd, log=logs / f"train-{job.label}.log")
            stamp.write_text(json.dumps(cmd))
            took = time.perf_counter() - start
            print(f"trained {job.label} in {took:.0f} s ({load_average()})\n", end="", flush=True)
        return job.label, job.run / "ckpt.pt"

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return dict(pool.map(one, jobs))


def federated_finished(ckdir: Path, rounds: int) -> bool:
    from clin_jepa.checkpoint import load_checkpoint
    from clin_jepa.errors import ClinJepaError

    try:
        return (ckdir / "ckpt.pt").is_file() and load_checkpoint(ckdir / "ckpt.pt").round >= rounds
    except ClinJepaError:
        return False


def run_federated(ckdir: Path, configs: list[Path], steps: int, local_steps: int, preset: str, seed: int,
                  batch_size: int, logs: Path, timeout: float,
                  extra: dict[str, object] | None = None) -> Path:
    """`flwr run` on a private SuperLink with rounds × local_steps × sites = steps (the stays a centralized
    run of ``steps`` sees); reused when its checkpoint already reached the rounds."""
    rounds = max(1, round(steps / (local_steps * len(configs))))
    ckdir = ckdir.resolve()
    config = {"num-rounds": rounds, "local-steps": local_steps, "preset": preset, "seed": seed,
              "batch-size": batch_size, "site-configs": ",".join(str(c.resolve()) for c in configs),
              "checkpoint-dir": str(ckdir), "synth-if-missing": False, **(extra or {})}
    stamp = ckdir.parent / f"{ckdir.name}.run_config.json"
    if federated_finished(ckdir, rounds) and stamp.is_file() and json.loads(stamp.read_text()) == config:
        print(f"reuse {ckdir}", flush=True)
        return ckdir / "ckpt.pt"
    shutil.rmtree(ckdir, ignore_errors=True)
    print(f"$ flwr run . ({rounds} rounds x {local_steps} steps x {len(configs)} sites, seed {seed})",
          flush=True)
    res = flower_run(logs / f"flwr-{ckdir.name}", config, num_supernodes=len(configs), timeout=timeout)
    (logs / f"{ckdir.name}.log").write_text(res.output)
    if res.returncode or not (ckdir / "ckpt.pt").is_file():
        sys.exit(f"federated run failed ({res.returncode}); see {logs}/{ckdir.name}.log:\n"
                 f"{res.output[-3000:]}")
    stamp.write_text(json.dumps(config))
    print(f"trained {ckdir.name} in {res.wall_s:.0f} s ({load_average()})", flush=True)
    return ckdir / "ckpt.pt"


def evaluate_groups(reports: Path, configs: list[Path], ckpts: dict[str, Path], args: list,
                    main_args: list, logs: Path, parallel: int = 1,
                    gru: tuple[int, list[int]] | None = None) -> dict:
    """One `clin-jepa evaluate` per discretization (sites tokenized once per group), ``parallel`` at once;
    ``main_args`` go to the group of the first checkpoint only (baselines, ground truth), the others get
    ``--no-baselines``. ``gru`` = (epochs, seeds) splits that first group by seed into ``parallel``
    evaluations, each with the GRUs of its seeds: a trained run and its untrained control share a seed,
    so every paired comparison stays inside one evaluation. Returns the merged ``models``/``baselines``
    of all reports plus the main report's ``data``."""
    from clin_jepa.checkpoint import load_checkpoint

    groups: dict[str, list[str]] = {}
    for label, ck in ckpts.items():
        groups.setdefault(load_checkpoint(ck).load_discretization().fingerprint(), []).append(label)
    main, *others = groups.values()
    jobs = [("main", main, main_args)]
    if gru is not None:
        epochs, seeds = gru
        n = max(1, min(parallel, len(seeds)))
        parts = [[str(s) for s in seeds[i::n]] for i in range(n)]
        # a label of no listed seed goes with the first part
        chunk = {lb: next((i for i, p in enumerate(parts) if lb.rsplit("@")[-1] in p), 0) for lb in main}
        jobs = [(f"main{'' if i == 0 else f'-{i}'}", [lb for lb in main if chunk[lb] == i],
                 [*main_args, "--gru-epochs", epochs, "--gru-seeds", *p]) for i, p in enumerate(parts)]
        jobs = [j for j in jobs if j[1]]
    jobs += [(labels[0].replace("@", "_"), labels, ["--no-baselines"]) for labels in others]

    def one(i: int) -> tuple[Path, dict]:
        name, labels, extra = jobs[i]
        out = reports / name
        cmd = [*CLI, "evaluate", *(ckpts[lb] for lb in labels), "--sites", *configs, "--out", out,
               "--labels", *(f"{lb}={ckpts[lb]}" for lb in labels), "--quiet", *args, *extra]
        sh(cmd, log=logs / f"evaluate-{i}.log")
        return out, json.loads((out / "metrics.json").read_text())

    merged: dict = {"models": {}, "baselines": {}, "reports": []}
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for out, metrics in list(pool.map(one, range(len(jobs)))):
            merged["models"].update(metrics["models"])
            merged["baselines"].update(metrics["baselines"])
            merged["reports"].append(str(out))
            merged.setdefault("data", metrics["data"])
    return merged


def evaluate_benchmark(args: argparse.Namespace, configs: list[Path], ckpts: dict[str, Path],
                       first: str) -> dict:
    """`evaluate_groups` with a benchmark's options: ground truth for every group, the baselines (one GRU
    per seed) with the group of ``first``, split by seed over ``--jobs`` evaluations."""
    return evaluate_groups(args.out / "reports", configs, {first: ckpts[first], **ckpts},
                           ["--bootstrap", args.bootstrap, "--seed", args.seeds[0], "--device", args.device,
                            "--ground-truth"], [], args.out / "logs", args.jobs,
                           gru=(args.gru_epochs, list(args.seeds)))


def write_outputs(out: Path, name: str, data: dict, md: str) -> None:
    """``out/name.json`` (strict JSON: NaN as null) and ``out/name.md``, atomically; prints the Markdown."""
    from clin_jepa.evaluation.report import to_jsonable
    from clin_jepa.io import atomic_write_text

    atomic_write_text(out / f"{name}.json", json.dumps(to_jsonable(data), indent=2) + "\n")
    atomic_write_text(out / f"{name}.md", md)
    print(md)
