"""medpipe.atomic: a write either lands whole or not at all; content hashes."""

from __future__ import annotations

import hashlib

import pytest

from medpipe.atomic import atomic_path, atomic_write_text, file_sha256


def test_a_finished_write_replaces_the_file(tmp_path):
    target = tmp_path / "sub" / "report.json"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text() == "second" and [p.name for p in target.parent.iterdir()] == ["report.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "mask.nii.gz"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["mask.nii.gz"]


def test_the_temporary_keeps_the_suffix_so_format_sniffing_writers_work(tmp_path):
    with atomic_path(tmp_path / "preview.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and tmp.name.endswith("preview.png")
        tmp.write_bytes(b"x")
    with atomic_path(tmp_path / "seg.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")


def test_file_sha256_is_the_content_hash_across_chunks(tmp_path):
    data = bytes(range(256)) * 10_000  # 2.5 MB: several 1 MiB chunks
    (tmp_path / "w.pt").write_bytes(data)
    assert file_sha256(tmp_path / "w.pt") == hashlib.sha256(data).hexdigest()
    assert file_sha256(tmp_path / "w.pt", chunk=7) == hashlib.sha256(data).hexdigest()
