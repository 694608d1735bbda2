"""Stop strings over streamed text (llamatool/server/stops.py): whatever the chunking, the
text sent is exactly the text before the first stop string, and no prefix of it leaks."""

import itertools
import random

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'llamatool[serve]')")

from llamatool.server.stops import StopFilter  # noqa: E402


def run(stops, pieces):
    f = StopFilter(stops)
    sent = []
    for p in pieces:
        sent.append(f.push(p))
        if f.stopped:
            break
    else:
        sent.append(f.flush())
    return "".join(sent), f.stopped, sent


def expected(stops, text):
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    return (text[: min(cuts)], True) if cuts else (text, False)


@pytest.mark.parametrize("stops", [["\n\n"], ["END"], ["abc", "bcd"], ["x", "xyz"], ["Ü€"], ["aaa"]])
def test_every_chunking_gives_the_text_before_the_stop(stops):
    rng = random.Random(0)
    texts = ["hello\n\nworld", "no stop here", "xxENxEND tail", "aabcd", "zzabzbcdz", "Ü€Ü€", "aaaa", "ab", "x"]
    for text in texts:
        for _ in range(30):
            cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(0, 4)))) if len(text) > 1 else []
            pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
            assert run(stops, pieces)[:2] == expected(stops, text), (stops, pieces)


def test_a_partial_stop_is_held_back_then_released():
    f = StopFilter(["STOP"])
    assert f.push("abc ST") == "abc "  # "ST" may begin STOP
    assert f.push("O") == ""
    assert f.push("X") == "STOX"  # it did not
    assert f.push("STO") == ""
    assert f.flush() == "STO"  # generation ended: the held text was real text


def test_stop_across_many_one_char_pieces():
    text = "one two three four"
    for stop in ("two", "o t", "four", "e f", "zz"):
        final, _ = expected([stop], text)
        out, stopped, sent = run([stop], list(text))
        assert (out, stopped) == expected([stop], text)
        # at every moment, what has gone out is a prefix of the final text: nothing of the
        # stop string was ever sent (text cannot be taken back)
        for n in range(len(sent)):
            assert final.startswith("".join(sent[: n + 1]))


def test_no_stops_passes_everything():
    assert list(itertools.accumulate(StopFilter([]).push(p) for p in ["a", "b"])) == ["a", "ab"]
