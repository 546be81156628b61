"""Hostile input gets a clear error: every case in ``tests/hostile_cases.py`` through the real CLI.

Each case must end with exit code 2 and one paragraph on stderr naming the problem, no traceback,
nothing written (the case's folder is byte-for-byte what it was before the command), in bounded time,
and — in the slow subprocess run that also prints the table for the closing note — bounded peak memory.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_cases import CASES, SLOW_REGEX_CASES, regex_site

from clin_jepa.cli import main as cli

_WRAPPER = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[2:]).returncode; "
            "open(sys.argv[1], 'w').write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); "
            "sys.exit(code)")
TIME_LIMIT_S = 60.0  # generous for a loaded 2-core machine; a hang or a 2^40 backtrack never finishes
RSS_LIMIT_MB = 1500  # torch + pandas + pyarrow import alone is ~500 MB


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("hostile-base")
    assert cli(["synth", "--out", str(root / "sites"), "--sites", "1", "--patients", "30",
                "--seed", "2"]) == 0
    site = root / "sites" / "hospital_a.yaml"
    assert cli(["train", "--sites", str(site), "--out", str(root / "run"), "--preset", "tiny", "--steps", "0",
                "--hours", "24", "--no-progress"]) == 0
    return root / "sites", root / "run" / "ckpt.pt"


def _prepare(name: str, base: tuple[Path, Path], work: Path) -> list[str]:
    shutil.copytree(base[0], work / "sites", symlinks=True)
    return CASES[name](work, work / "sites" / "hospital_a.yaml", base[1])


def _one_paragraph(err: str) -> bool:
    text = err.strip()
    return bool(text) and "Traceback" not in err and "\n\n" not in text


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(CASES))
def test_hostile_input_is_refused_cleanly(name, base, tmp_path, capsys, one_thread):
    argv = _prepare(name, base, tmp_path)
    before = _tree(tmp_path)
    capsys.readouterr()
    start = time.perf_counter()
    try:
        code = cli(argv)
    except SystemExit as exc:  # argparse's own usage errors exit 2 with one paragraph too
        code = exc.code
    took = time.perf_counter() - start
    out = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {out.err[-2000:]}"
    assert _one_paragraph(out.err), out.err[-3000:]
    assert f"clin-jepa {argv[0]}" in out.err
    assert _tree(tmp_path) == before, "the command wrote or changed files"
    assert took < TIME_LIMIT_S


@pytest.mark.timeout(300)
@pytest.mark.parametrize("where", sorted(SLOW_REGEX_CASES))
def test_catastrophic_regex_runs_in_linear_time(where, base, tmp_path, capsys):
    """``(a+)+$`` against ``"a" * 40 + "!"`` is 2^40 steps for Python's ``re``; RE2 decides it at once."""
    shutil.copytree(base[0], tmp_path / "sites", symlinks=True)
    site = regex_site(tmp_path / "sites" / "hospital_a.yaml", SLOW_REGEX_CASES[where])
    start = time.perf_counter()
    code = cli(["validate", str(site)])
    assert time.perf_counter() - start < 20
    assert code in (0, 2) and "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_hostile_input_table_in_fresh_processes(base, tmp_path):
    """Every case as its own ``clin-jepa`` process: exit code, wall time and peak RSS (for the closing
    note: ``pytest -s`` prints the table)."""
    exe = Path(sys.executable).with_name("clin-jepa")
    rows = []
    for name in sorted(CASES):
        work = tmp_path / name
        work.mkdir()
        argv = _prepare(name, base, work)
        before = _tree(work)
        start = time.perf_counter()
        # A forked child's ru_maxrss starts at its parent's RSS (this pytest process: GBs), so the command
        # runs under a small wrapper process whose children's peak is the command's own.
        proc = subprocess.run([sys.executable, "-c", _WRAPPER, str(tmp_path / "rss"), str(exe), *argv],
                              capture_output=True, text=True)
        took, rss = time.perf_counter() - start, int((tmp_path / "rss").read_text()) / 1024
        rows.append((name, proc.returncode, took, rss, _one_paragraph(proc.stderr), _tree(work) == before))
    print("\n| case | exit | time s | peak RSS MB | one paragraph | nothing written |")
    print("|---|---|---|---|---|---|")
    for name, code, took, rss, para, clean in rows:
        print(f"| {name} | {code} | {took:.1f} | {rss:.0f} | {para} | {clean} |")
    bad = [r for r in rows if r[1] != 2 or not r[4] or not r[5] or r[2] > TIME_LIMIT_S or r[3] > RSS_LIMIT_MB]
    assert not bad, bad
