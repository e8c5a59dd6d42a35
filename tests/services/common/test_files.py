"""The file store on a local directory (S3 is exercised through the gateway's batch tests)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument, NotFound
from services.common.files import FileSettings, FileStore, derived_file_id


def test_files_are_their_owners_and_listed_newest_first(tmp_path) -> None:
    store = FileStore(FileSettings(dir=tmp_path))
    first = store.put("alice", "a.jsonl", "batch", b"one\n")
    second = store.put("alice", "b.jsonl", "user_data", b"two\n")
    store.put("bob", "c.jsonl", "batch", b"three\n")
    assert [r.id for r in store.list_files("alice")] == [second.id, first.id]
    assert [r.id for r in store.list_files("alice", "batch")] == [first.id]
    assert store.content(first.id, "alice") == b"one\n" and store.get(first.id, "").owner == "alice"
    for call in (store.get, store.content, store.delete):
        with pytest.raises(NotFound) as refused:
            call(first.id, "bob")  # another owner's file is missing, word for word
        assert str(refused.value) == str(NotFound(f"No file '{first.id}'."))
    store.delete(first.id, "alice")
    with pytest.raises(NotFound):
        store.get(first.id, "alice")
    with pytest.raises(NotFound):
        store.get("../../etc/passwd", "alice")


def test_limits_and_names(tmp_path) -> None:
    store = FileStore(FileSettings(dir=tmp_path, max_bytes=10, max_files_per_owner=2))
    with pytest.raises(InvalidArgument):
        store.put("alice", "big", "batch", b"x" * 11)
    store.put("alice", "1", "batch", b"1")
    store.put("alice", "2", "batch", b"2")
    with pytest.raises(InvalidArgument, match="At most 2 files"):
        store.put("alice", "3", "batch", b"3")
    replaced = store.put("alice", "out", "batch_output", b"v2", file_id=derived_file_id("batch:output"))
    assert replaced.id == derived_file_id("batch:output")  # a derived id is rewritten, not counted again
    for name in ("../x", "a/b", "", ".hidden"):
        with pytest.raises(InvalidArgument):
            store.put_object(name, b"")
    store.put_part("results", 0, b"a\n")
    store.put_part("results", 1, b"b\n")
    assert store.read_parts("results") == [b"a\n", b"b\n"] and store.read_parts("none") == []
