"""`trainerd models ...` (trainerd/cli/models.py): `export --merged` merges in a child
process (trainerd.line.export starts `trainerd.worker.consolidate --export`); this process
never imports torch."""

from __future__ import annotations

import json

import pytest

from tests.cli.torchfree import trainerd_watched


@pytest.mark.slow
def test_a_merged_export_runs_in_a_child_and_its_refusal_is_the_same_sentence(trained_line, tmp_path):
    base = trained_line["base"]
    dest = tmp_path / "merged"
    p, heavy = trainerd_watched(tmp_path / "export.json", "models", "export", "v0002", dest, "--merged",
                                "--base-dir", base)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == f"exported v0002 (full, merged) to {dest}"
    man = json.loads((dest / "manifest.json").read_text())
    assert (man["merged_from"], man["kind"]) == ("v0002", "full") and (dest / "config.json").is_file()
    assert heavy == []
    # Refused before any child starts (trainerd.line.export.check_export): the sentence, exit 1.
    p, heavy = trainerd_watched(tmp_path / "again.json", "models", "export", "v0002", dest, "--merged",
                                "--base-dir", base)
    assert p.returncode == 1
    assert p.stderr.strip() == f"error: {dest} already exists and is not an empty folder", p.stderr
    assert heavy == []
