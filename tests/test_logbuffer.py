"""logbuffer.py: a task's log stays bounded, keeping its head, its tail and a note of the cut."""

from dirt.logbuffer import LogBuffer


def test_a_short_log_is_kept_whole():
    log = LogBuffer(limit=4096)
    for i in range(10):
        log.add(f"line {i}")
    assert log.render() == b"".join(f"line {i}\n".encode() for i in range(10))
    assert log.dirty


def test_a_long_log_keeps_head_and_tail_within_the_limit():
    log = LogBuffer(limit=8192, head=1024)
    for i in range(10_000):
        log.add(f"line {i:05d}")
    text = log.render()
    assert text.startswith(b"line 00000\n")
    assert text.endswith(b"line 09999\n")
    assert b"bytes of log omitted here" in text
    assert len(text) <= 8192 + 100
    assert log.dropped == 10_000 * 11 - (8192)


def test_batches_larger_than_the_limit_are_cut_inside():
    log = LogBuffer(limit=4096, head=1024)
    log.add("\n".join("y" * 99 for _ in range(1000)))  # 100 KB in one batch
    text = log.render()
    assert len(text) <= 4096 + 100
    assert text.endswith(b"y" * 99 + b"\n")
