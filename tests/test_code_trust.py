"""A deployed node refuses a FAB whose code is not the site's installed clin-jepa: another declared
version, or edited enforcement code. Each case lays out a FAB directory as Flower installs it and runs
the real ClientApp from it in a fresh process with that directory first on sys.path (as Flower's
``load_app`` does), against the installed package of this checkout."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

from clin_jepa.cli import main as cli
from tests.flwr_utils import REPO

SCRIPT = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, sys.argv[1])  # Flower puts the FAB's directory first
    from flwr.app import ConfigRecord, Context, Message, RecordDict
    from flwr.app.metadata import Metadata
    import client.client_app as ca
    node_config = json.loads(sys.argv[3])
    run_config = {"site-configs": sys.argv[2], "synth-if-missing": False}
    context = Context(run_id=1, node_id=5, node_config=node_config, state=RecordDict(), run_config=run_config)
    meta = Metadata(run_id=1, message_id="s", src_node_id=0, dst_node_id=5, reply_to_message_id="",
                    group_id="0", created_at=time.time(), ttl=3600.0, message_type="query.statistics")
    query = RecordDict({"config": ConfigRecord({"what": "identify"})})
    reply = ca.app(Message(query, metadata=meta), context)
    from client.trust import APP_DIR
    from clin_jepa.code_trust import code_mismatch
    print(json.dumps({"from": ca.__file__, "error": reply.error.reason if reply.has_error() else None,
                      "site": None if reply.has_error() else reply.content["site"]["site"],
                      "compared": code_mismatch(APP_DIR).compared}))
""")


def _fab(tmp_path, version: str = "0.1.0", edit: str | None = None):
    app = tmp_path / "fab"
    for package in ("clin_jepa", "client"):
        shutil.copytree(REPO / package, app / package, ignore=shutil.ignore_patterns("__pycache__"))
    text = (REPO / "pyproject.toml").read_text()
    (app / "pyproject.toml").write_text(text.replace('version = "0.1.0"', f'version = "{version}"', 1))
    if edit:
        with (app / edit).open("a") as fh:
            fh.write("\nBUDGET_CHECK = False  # the coordinator's edit\n")
    return app


def _run(app, site, node_config: dict) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(app), str(site), json.dumps(node_config)],
                         capture_output=True, text=True, timeout=240, cwd=app)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert cli(["synth", "--out", str(out), "--sites", "1", "--patients", "20", "--seed", "4"]) == 0
    return out / "hospital_a.yaml"


def test_the_installed_code_runs(tmp_path, site):
    got = _run(_fab(tmp_path), site, {"site-config": str(site)})
    assert got["from"].startswith(str(tmp_path / "fab"))  # the FAB's copy ran ...
    assert got == {**got, "error": None, "site": "hospital_a"}  # ... and, identical, was accepted
    n_files = len(list((tmp_path / "fab").rglob("*.py")))
    assert got["compared"] == n_files > 50  # every file was compared, not skipped


def test_another_declared_version_is_refused(tmp_path, site):
    got = _run(_fab(tmp_path, version="9.9.9"), site, {"site-config": str(site)})
    assert got["site"] is None
    assert "declares clin-jepa version 9.9.9, this site installed 0.1.0" in got["error"]


def test_edited_enforcement_code_is_refused(tmp_path, site):
    got = _run(_fab(tmp_path, edit="clin_jepa/privacy/ledger.py"), site, {"site-config": str(site)})
    assert got["site"] is None
    assert "1 file(s) of the FAB differ" in got["error"] and "clin_jepa/privacy/ledger.py" in got["error"]


def test_a_simulated_node_is_not_checked(tmp_path, site):
    got = _run(_fab(tmp_path, version="9.9.9"), site, {"partition-id": 0})
    assert got["error"] is None and got["site"] == "hospital_a"


def test_the_fab_ships_the_glue_but_not_the_core(tmp_path):
    """The FAB that `flwr run` builds from this project carries `client/` and `server/` only: the core
    that enforces DP, the ledger and suppression (`clin_jepa/`) is imported from each site's own install."""
    from flwr.cli.build import build_fab_from_disk

    from clin_jepa.localrun import stage_app

    app = stage_app(REPO, tmp_path / "app")
    names = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(app))).namelist()
    assert "client/client_app.py" in names and "server/server_app.py" in names
    assert not [n for n in names if n.startswith("clin_jepa/")]
