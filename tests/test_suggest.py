"""`clin-jepa validate --suggest`: code_map entries for unmapped codes from metadata/codes.parquet."""

from __future__ import annotations

from pathlib import Path

import yaml

from clin_jepa.cli import main


def test_suggestions_restore_removed_rules_and_propose_unused_labs(tmp_path: Path, capsys) -> None:
    assert main(["synth", "--out", str(tmp_path), "--sites", "2", "--patients", "20"]) == 0
    raw = yaml.safe_load((tmp_path / "hospital_b.yaml").read_text())
    gone = ("creatinine", "glucose", "vasopressor")
    removed = {r["code"]: r for r in raw["code_map"] if r["concept"] in gone}
    raw["code_map"] = [r for r in raw["code_map"] if r.get("code") not in removed]
    cut = tmp_path / "cut.yaml"
    cut.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    # the removed codes push the unmapped share over the limit: invalid, and the suggestions say what to add
    assert main(["validate", "--suggest", str(cut)]) == 2
    out = capsys.readouterr().out
    entries = yaml.safe_load(out)
    by_code = {e["code"]: e for e in entries}
    for code, rule in removed.items():  # the site's own unit comes back from the description
        assert {k: by_code[code].get(k) for k in ("concept", "unit")} == {
            "concept": rule["concept"], "unit": rule.get("unit")}, code
    assert by_code["ITEM//50885"]["concept"] == "bilirubin" and "unit not found: CHECK" in out
    raw["code_map"] += [by_code[c] for c in removed]
    cut.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert main(["validate", str(cut)]) == 0
