"""actors.xenstored.journal: xenstored's append-only log and its checkpoint, read back as a
restarted xenstored reads them (a torn tail, a bad or missing record, a crash between a
checkpoint and the emptying of the log)."""

import os

import pytest

from actors.xenstored.journal import Journal, JournalError, read_frames


@pytest.fixture
def prefix(tmp_path):
    return str(tmp_path / "xenstored")


def reopened(prefix: str) -> Journal:
    """The journal as the next incarnation opens it."""
    return Journal(prefix)


def frames_of(path: str) -> list[tuple[int, object, int]]:
    with open(path, "rb") as f:
        frames, why = read_frames(f.read())
    assert why is None
    return frames


def test_records_round_trip_in_order_with_bytes_intact(prefix):
    j = Journal(prefix)
    records = [["open", 1, 0, True, False, "h1/xl"], ["req", 1, b"\x00\xff" * 40, b"OK\x00"],
               ["shutdown", [3, 4]]]
    for r in records:
        j.append(r)
    j.close()
    again = reopened(prefix)
    assert again.load() == (None, records)
    assert again.damage is None
    assert [seq for seq, _, _ in frames_of(again.log_path)] == [1, 2, 3]
    assert oct(os.stat(again.log_path).st_mode & 0o777) == "0o600"


def test_a_checkpoint_replaces_the_records_it_covers_and_numbering_goes_on(prefix):
    j = Journal(prefix)
    j.append(["a"])
    j.append(["b"])
    j.checkpoint({"state": 2})
    assert j.size == 0 and os.path.getsize(j.log_path) == 0
    j.append(["c"])
    j.close()
    again = reopened(prefix)
    assert again.load() == ({"state": 2}, [["c"]])
    again.append(["d"])
    assert [seq for seq, _, _ in frames_of(again.log_path)] == [3, 4]
    assert reopened(prefix).load() == ({"state": 2}, [["c"], ["d"]])


def test_a_torn_tail_is_cut_and_appends_go_on_after_the_last_whole_record(prefix):
    j = Journal(prefix)
    for r in (["a"], ["b"], ["c"]):
        j.append(r)
    j.close()
    whole = os.path.getsize(j.log_path)
    os.truncate(j.log_path, whole - 3)  # the kill came in the middle of the last write
    again = reopened(prefix)
    assert again.load() == (None, [["a"], ["b"]])
    assert again.damage.startswith("torn tail")
    again.append(["c2"])
    assert reopened(prefix).load() == (None, [["a"], ["b"], ["c2"]])


def abc_journal(prefix):
    """A closed journal of records a, b, c; it and where a's and b's frames end."""
    j = Journal(prefix)
    for r in (["a"], ["b"], ["c"]):
        j.append(r)
    j.close()
    (_, _, end_a), (_, _, end_b), _ = frames_of(j.log_path)
    return j, end_a, end_b


def test_a_record_with_a_bad_checksum_ends_what_is_trusted(prefix):
    j, end_a, end_b = abc_journal(prefix)
    with open(j.log_path, "r+b") as f:
        f.seek(end_b - 1)  # the last byte of b's payload
        last = f.read(1)
        f.seek(end_b - 1)
        f.write(bytes([last[0] ^ 0x40]))
    again = reopened(prefix)
    assert again.load() == (None, [["a"]])  # c stands on b: not replayed either
    assert again.damage.startswith("bad checksum")
    assert os.path.getsize(j.log_path) == end_a


def test_a_lost_record_ends_what_is_trusted(prefix):
    j, end_a, end_b = abc_journal(prefix)
    with open(j.log_path, "rb") as f:
        data = f.read()
    with open(j.log_path, "wb") as f:
        f.write(data[:end_a] + data[end_b:])  # b is gone, c is whole
    again = reopened(prefix)
    assert again.load() == (None, [["a"]])
    assert again.damage == "record 2 is missing (found 3)"


def test_records_a_checkpoint_covers_are_skipped_if_the_log_was_not_emptied(prefix):
    """Killed after the checkpoint's rename, before the log was truncated."""
    j = Journal(prefix)
    j.append(["a"])
    j.append(["b"])
    with open(j.log_path, "rb") as f:
        old_log = f.read()
    j.checkpoint({"after": "b"})
    j.close()
    with open(j.log_path, "wb") as f:
        f.write(old_log)
    again = reopened(prefix)
    assert again.load() == ({"after": "b"}, [])
    assert again.damage is None
    again.append(["c"])
    assert reopened(prefix).load() == ({"after": "b"}, [["c"]])


def test_an_unreadable_checkpoint_is_an_error_not_an_empty_state(prefix):
    j = Journal(prefix)
    j.checkpoint({"x": 1})
    j.close()
    with open(j.checkpoint_path, "r+b") as f:
        f.seek(-1, os.SEEK_END)
        f.write(b"\x00")
    with pytest.raises(JournalError, match="bad checksum"):
        reopened(prefix).load()


def test_reset_forgets_everything(prefix):
    j = Journal(prefix)
    j.append(["a"])
    j.checkpoint({"x": 1})
    j.append(["b"])
    j.reset()
    assert not os.path.exists(j.checkpoint_path)
    j.append(["fresh"])
    assert reopened(prefix).load() == (None, [["fresh"]])
