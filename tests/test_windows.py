"""streamer.windows: seq, stream time, chunking independence and the end-of-stream window."""

from __future__ import annotations

import numpy as np
import pytest

from streamer.windows import Windower

SR = 100  # a small rate keeps the arithmetic readable: window 3 s = 300 samples, hop 50


def _stream(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.float32)


def _push_all(w: Windower, x: np.ndarray, sizes: list[int]) -> list:
    out, pos = [], 0
    for k, n in enumerate(sizes):
        out += w.push(x[pos:pos + n], wall_time=float(k), arrived=float(k))
        pos += n
    return out


def test_seq_and_stream_time() -> None:
    w = Windower("s", SR, 3.0, 0.5)
    wins = w.push(_stream(600))
    assert [x.seq for x in wins] == list(range(7))  # starts 0, 50, ..., 300
    assert [x.t_start for x in wins] == pytest.approx([0.5 * k for k in range(7)])
    assert all(x.t_end == pytest.approx(x.t_start + 3.0) for x in wins)
    for x in wins:
        np.testing.assert_array_equal(x.samples, _stream(600)[x.start_sample:x.start_sample + 300])
        assert x.n_valid == 300 and x.stream_id == "s"


def test_chunk_sizes_do_not_matter() -> None:
    x = _stream(1234)
    rng = np.random.default_rng(0)
    sizes = list(rng.integers(1, 90, 200))
    a = _push_all(Windower("s", SR, 3.0, 0.5), x, sizes)
    b = Windower("s", SR, 3.0, 0.5).push(x)
    assert len(a) == len(b) == 19
    for u, v in zip(a, b, strict=True):
        assert (u.seq, u.t_start, u.start_sample) == (v.seq, v.t_start, v.start_sample)
        np.testing.assert_array_equal(u.samples, v.samples)


def test_window_stamped_with_completing_chunk() -> None:
    w = Windower("s", SR, 3.0, 0.5)
    wins = _push_all(w, _stream(400), [250, 40, 10, 100])
    # the first window (samples 0..299) is completed by the 3rd chunk (ends at 300)
    assert wins[0].arrived == 2.0 and wins[0].wall_time == 2.0
    assert [x.arrived for x in wins] == [2.0, 3.0, 3.0]


def test_short_stream_gets_one_padded_window() -> None:
    w = Windower("s", SR, 3.0, 0.5)
    assert w.push(_stream(120)) == []
    (last,) = w.flush()
    assert (last.seq, last.t_start, last.n_valid) == (0, 0.0, 120)
    np.testing.assert_array_equal(last.samples[:120], _stream(120))
    assert not last.samples[120:].any() and last.samples.size == 300
    assert w.flush() == []


def test_uncovered_tail_padded_and_aligned_end_not() -> None:
    w = Windower("s", SR, 3.0, 0.5)
    wins = w.push(_stream(330))  # one full window, 30 samples uncovered
    (last,) = w.flush()
    assert last.seq == wins[-1].seq + 1 and last.t_start == pytest.approx(0.5)
    assert last.n_valid == 280  # samples 50..329 are real
    np.testing.assert_array_equal(last.samples[:280], _stream(330)[50:])
    w2 = Windower("s", SR, 3.0, 0.5)
    w2.push(_stream(350))  # windows end exactly at 300 and 350: nothing left uncovered
    assert w2.flush() == []


def test_hop_longer_than_window() -> None:
    w = Windower("s", SR, 1.0, 2.5)  # 100-sample windows every 250 samples
    wins = w.push(_stream(1000))
    assert [x.start_sample for x in wins] == [0, 250, 500, 750]
    np.testing.assert_array_equal(wins[2].samples, _stream(1000)[500:600])


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Windower("s", SR, 3.0, 0.0)
