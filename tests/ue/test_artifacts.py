"""Atomic writes leave either the old or the new content, never a partial one; the manifest."""

from __future__ import annotations

import pytest

from ue.artifacts import Manifest, RunLayout, atomic_directory, atomic_write_json, read_json


def test_atomic_directory_keeps_the_old_one_on_failure(tmp_path):
    target = tmp_path / "heads" / "alien"
    with atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("v1")
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("crash mid-write")
    assert (target / "a.txt").read_text() == "v1"
    assert [p.name for p in target.parent.iterdir()] == ["alien"]  # no temp left behind


def test_atomic_json_and_corrupt_file_message(tmp_path):
    atomic_write_json(tmp_path / "x.json", {"a": 1})
    assert read_json(tmp_path / "x.json") == {"a": 1}
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json: not valid JSON"):
        read_json(tmp_path / "bad.json")


def test_manifest_tracks_stage_status_and_config_hash(tmp_path):
    layout = RunLayout(tmp_path, "r1")
    m = Manifest(layout)
    assert not m.is_done("extract")
    m.update("extract", status="running", config_hash="abc")
    assert not m.is_done("extract")
    m.update("extract", status="failed", error="boom")
    m.update("extract", status="done", error=None)
    assert "error" not in m.stage("extract")
    assert m.is_done("extract", "abc") and not m.is_done("extract", "other")
    assert read_json(layout.manifest)["versions"]["torch"]
    with pytest.raises(ValueError, match="plain"):
        RunLayout(tmp_path, "../escape")
