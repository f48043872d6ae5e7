"""bayesq.files: atomic writes leave the old file or the new one, never a partial one."""

from __future__ import annotations

import pytest

from bayesq.files import atomic_path, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_content(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert [p.name for p in target.parent.iterdir()] == ["a.txt"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "a.json"
    atomic_write_json(target, {"x": 1})
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of a fi")
        raise RuntimeError("killed mid-write")
    assert target.read_text().strip() == '{\n  "x": 1\n}'
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_stale_temporary_of_a_killed_write_is_removed(tmp_path):
    target = tmp_path / "a.txt"
    (tmp_path / ".a.txt.tmp-abc123").write_text("left by SIGKILL")
    atomic_write_text(target, "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_written_file_has_the_permissions_open_would_give(tmp_path):
    import os

    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        (tmp_path / "b.txt").write_text("x")
    finally:
        os.umask(mask)
    mode = (tmp_path / "a.txt").stat().st_mode & 0o777
    assert mode == (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644
