"""The durability checker (cluster/fault/disk.py): blkverify's ``ACK``/``FLUSH`` console
records read back, and an image judged against them, with losses planted by hand. (The same
checker against a real blkback, honest or with a lying cache, is in
test_blkback_faults.py.)"""

import pytest

from actors.guest.blk import verify_block
from cluster.fault.disk import Ack, LostWrite, lost_writes, parse_acks

BS = 4096
SPB = BS // 512  # sectors per block


def ack(seq, first_block, nblocks, gen=7, flushed=False):
    return Ack(seq, first_block * SPB, (first_block + nblocks) * SPB - 1, gen, BS, flushed)


def test_acks_are_parsed_with_what_a_flush_covers_and_the_rest_skipped():
    lines = ["Booting paravirtualized kernel on Xen (xenray)",
             "ACK 0 0-63 gen=7 bs=4096",
             "ACK 8 64-127 gen=7 bs=4096\n",
             "FLUSH 16",
             "ACK 16 128-191 gen=7 bs=4096",
             "ACK 16 128-191 gen=7 bs=4096",  # printed twice by a resumed run
             "blkverify: writing blocks 24-31: EIO: 8 of 8 requests failed; retrying in 0.5 s",
             "ACK 24 192-199 gen=-3 bs=4096",
             "NACK 1 2-3 gen=1 bs=512", "ACK x", 'RESULT {"init": "blkverify"}']
    assert parse_acks(lines) == [ack(0, 0, 8, flushed=True), ack(8, 8, 8, flushed=True),
                                 ack(16, 16, 8), ack(24, 24, 1, gen=-3)]


@pytest.mark.parametrize("line", ["ACK 0 0-7 gen=1 bs=1000", "ACK 0 8-7 gen=1 bs=4096",
                                  "ACK 0 0-7 gen=1 bs=0"])
def test_an_ack_that_is_not_whole_blocks_is_refused_naming_the_line(line):
    with pytest.raises(ValueError, match="not whole blocks"):
        parse_acks([line])


def image_of(tmp_path, acks, nblocks=32):
    """An image holding every block the acks wrote, in order."""
    data = bytearray(nblocks * BS)
    for a in acks:
        for sector in a.blocks():
            data[sector * 512:sector * 512 + BS] = a.data(sector)
    path = tmp_path / "disk.img"
    path.write_bytes(data)
    return path


def zero_block(path, block):
    with open(path, "r+b") as f:
        f.seek(block * BS)
        f.write(bytes(BS))


def test_an_intact_image_has_no_lost_write(tmp_path):
    acks = [ack(0, 0, 8, flushed=True), ack(8, 8, 8)]
    assert lost_writes(image_of(tmp_path, acks), acks) == []
    assert acks[0].data(8) == verify_block(7, 1, BS)  # block 1, at sector 8


def test_a_zeroed_acknowledged_block_is_caught(tmp_path):
    acks = [ack(0, 0, 8, flushed=True), ack(8, 8, 8, flushed=True)]
    path = image_of(tmp_path, acks)
    zero_block(path, 11)
    assert lost_writes(path, acks) == [LostWrite(acks[1], 11 * SPB, "zeros")]
    assert lost_writes(path, acks, flushed_only=True) == [LostWrite(acks[1], 88, "zeros")]
    assert str(lost_writes(path, acks)[0]) == \
        "block at sector 88 (ACK 8, gen 7, flushed): zeros"


def test_after_a_power_cut_only_flushed_blocks_must_be_there(tmp_path):
    acks = [ack(0, 0, 8, flushed=True), ack(8, 8, 8)]
    path = image_of(tmp_path, acks)
    zero_block(path, 12)  # unflushed: a power cut may drop it
    assert lost_writes(path, acks, flushed_only=True) == []
    assert [w.sector for w in lost_writes(path, acks)] == [96]
    zero_block(path, 3)  # flushed: it must survive
    assert [w.sector for w in lost_writes(path, acks, flushed_only=True)] == [24]


def test_a_block_written_again_is_judged_by_its_last_write(tmp_path):
    first, again = ack(0, 0, 4, gen=1, flushed=True), ack(4, 2, 1, gen=2)
    acks = [first, again]
    path = image_of(tmp_path, acks)
    assert lost_writes(path, acks) == []
    stale = image_of(tmp_path, [first])  # the later write never landed
    assert lost_writes(stale, acks) == [LostWrite(
        again, 16, "the data of ACK 0 (gen 1), an earlier write")]
    # after a power cut the unflushed rewrite may be gone, or there: both are fine
    assert lost_writes(stale, acks, flushed_only=True) == []
    assert lost_writes(path, acks, flushed_only=True) == []
    zero_block(stale, 2)
    assert [str(w) for w in lost_writes(stale, acks, flushed_only=True)] == [
        "block at sector 16 (ACK 0, gen 1, flushed): zeros"]


def test_other_data_and_a_short_image_are_named(tmp_path):
    acks = [ack(0, 0, 2, flushed=True)]
    path = image_of(tmp_path, acks, nblocks=2)
    with open(path, "r+b") as f:
        f.write(b"\x01" * BS)
        f.truncate(BS)
    assert [w.found for w in lost_writes(path, acks)] == [
        "other data", "nothing: past the end of the image"]
