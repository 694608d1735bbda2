"""The server's engine in-process (llamatool/server/engine.py): slots, queue, failures."""

from __future__ import annotations

import threading
import time

import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'llamatool[serve]')")

from llamatool.model import Model  # noqa: E402
from llamatool.sampling import SamplingParams  # noqa: E402
from llamatool.server.engine import CACHE_BLOCK, Delta, Engine, Failed, Finished, Job, last_piece_start  # noqa: E402


@pytest.fixture(scope="module")
def model(default_model):
    return Model.load(default_model, n_ctx=512)


class Collector:
    def __init__(self):
        self.events, self.done = [], threading.Event()

    def __call__(self, event):
        self.events.append(event)
        if isinstance(event, (Finished, Failed)):
            self.done.set()

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Delta))


def job(ids, emit, **kw):
    kw.setdefault("max_tokens", 12)
    return Job(prompt_ids=ids, sampling=SamplingParams(temperature=0), emit=emit, **kw)


class Boom:
    """A constraint whose mask fails: stands for any bug inside one request."""

    def mask(self, logits):
        raise RuntimeError("boom")

    def accept(self, token):
        pass


def test_an_exception_in_one_request_fails_only_that_request(model, default_model):
    reference = Model.load(default_model, n_ctx=512)
    ids = model.tokenizer.encode("The river flows", add_special=True)
    want = reference.generate(ids, max_tokens=12, temperature=0).text
    engine = Engine(model, 2)
    engine.start()
    try:
        bad, good = Collector(), Collector()
        engine.submit(job(ids, bad, constraint=Boom()))
        engine.submit(job(ids, good))
        assert bad.done.wait(120) and good.done.wait(120)
        assert isinstance(bad.events[-1], Failed) and bad.events[-1].error.status == 500
        assert isinstance(good.events[-1], Finished) and good.text == want
        again = Collector()  # the engine still serves
        engine.submit(job(ids, again))
        assert again.done.wait(120) and again.text == want
    finally:
        engine.stop()


def test_one_slot_serves_a_queue_in_order_and_skips_cancelled_jobs(model):
    engine = Engine(model, 1)
    prompts = [model.tokenizer.encode(f"Fact number {i}:", add_special=True) for i in range(4)]
    collectors = [Collector() for _ in prompts]
    jobs = [job(ids, c, max_tokens=6) for ids, c in zip(prompts, collectors)]
    for j in jobs:
        engine.submit(j)
    jobs[2].cancel()  # still waiting: it must never run
    engine.start()
    try:
        for i in (0, 1, 3):
            assert collectors[i].done.wait(120)
            assert isinstance(collectors[i].events[-1], Finished) and collectors[i].events[-1].completion_tokens == 6
        time.sleep(0.2)
        assert collectors[2].events == []
    finally:
        engine.stop()


def test_long_prompts_are_read_in_aligned_blocks_and_reused(model):
    engine = Engine(model, 2)
    engine.start()
    try:
        ids = model.tokenizer.encode("word " * (3 * CACHE_BLOCK), add_special=True)
        runs = []
        for _ in range(2):
            c = Collector()
            engine.submit(job(ids, c, max_tokens=8))
            assert c.done.wait(120)
            runs.append((c.text, c.events[-1]))
        (text1, done1), (text2, done2) = runs
        assert done1.cached_tokens == 0 and done2.cached_tokens == last_piece_start(len(ids), 8)
        assert text1 == text2
    finally:
        engine.stop()


def test_the_last_prompt_piece_is_long_enough_for_the_fast_products():
    assert [last_piece_start(n, 8) for n in (1, 7, 8, 64, 65, 71, 72, 128, 130, 200)] == [0, 0, 0, 0, 0, 0, 64, 64, 64, 192]


def test_stop_cancels_running_and_waiting_jobs(model):
    engine = Engine(model, 1)
    engine.start()
    running, waiting = Collector(), Collector()
    ids = model.tokenizer.encode("Once upon a time", add_special=True)
    engine.submit(job(ids, running, max_tokens=400))
    engine.submit(job(ids, waiting, max_tokens=400))
    deadline = time.monotonic() + 60
    while not running.events and time.monotonic() < deadline:
        time.sleep(0.01)
    engine.stop()
    assert running.done.is_set() and waiting.done.is_set()
    assert isinstance(running.events[-1], Failed) and running.events[-1].error.status == 503
    assert isinstance(waiting.events[-1], Failed)


def test_busy_slots_share_each_forward_call(model):
    """Continuous batching: with four requests running, each forward call carries the next
    token of every one of them, and each request gets the tokens it gets alone."""
    engine = Engine(model, 4)
    prompts = [model.tokenizer.encode(f"Once upon a time, in town number {i}, there", add_special=True) for i in range(4)]
    calls = []
    original = model.eval_many

    def recording(pool, parts):
        calls.append([len(p.ids) for p in parts])
        return original(pool, parts)

    model.eval_many = recording
    engine.start()
    try:
        alone = []
        for ids in prompts:
            c = Collector()
            engine.submit(job(ids, c, max_tokens=10))
            assert c.done.wait(120)
            alone.append(c.text)
        calls.clear()
        together = [Collector() for _ in prompts]
        with engine._cond:  # all four are admitted in the same step
            for ids, c in zip(prompts, together):
                engine.submit(job(ids, c, max_tokens=10))
        assert all(c.done.wait(120) for c in together)
        assert [c.text for c in together] == alone
        assert calls[0] == [len(ids) for ids in prompts]  # the four prompts in one call
        assert calls.count([1, 1, 1, 1]) >= 8  # then one token of each per call
    finally:
        del model.eval_many
        engine.stop()


@pytest.fixture(scope="module")
def repacked(default_model):
    return Model.load(default_model, n_ctx=512, repack=True)


def run_job(engine, ids, max_tokens=8):
    c = Collector()
    engine.submit(job(ids, c, max_tokens=max_tokens))
    assert c.done.wait(120)
    assert isinstance(c.events[-1], Finished)
    return c.text, c.events[-1].cached_tokens


def test_a_repacked_model_reuses_any_cached_prefix_and_answers_as_generate(repacked):
    """Repacked, a token's bits do not depend on how the prompt is cut (Model.split_invariant):
    a slot reuses everything its cache shares with the next prompt, not only whole aligned
    blocks, and every answer is the one Model.generate gives."""
    assert repacked.split_invariant
    tok = repacked.tokenizer
    system = "You are a careful assistant who answers in one short sentence. " * 3
    first = tok.encode(system + "What is the capital of France?", add_special=True)
    second = tok.encode(system + "What is the tallest mountain?", add_special=True)
    shared = next(i for i, (a, b) in enumerate(zip(first, second)) if a != b)
    assert 0 < shared and shared % CACHE_BLOCK != 0
    engine = Engine(repacked, 1)  # one slot: every request finds the previous one's cache
    engine.start()
    try:
        text1, cached1 = run_job(engine, first)
        text2, cached2 = run_job(engine, first)
        text3, cached3 = run_job(engine, second)
        longer = first + tok.encode(" Answer in French.")
        text4, cached4 = run_job(engine, longer)
    finally:
        engine.stop()
    assert (cached1, cached2, cached3) == (0, len(first) - 1, shared)
    assert cached4 == shared  # the slot last held `second`
    assert text1 == text2
    for ids, text in ((first, text1), (second, text3), (longer, text4)):
        repacked.reset()
        assert repacked.generate(ids, max_tokens=8, temperature=0).text == text


def test_a_long_prompt_is_read_in_pieces_from_where_the_cache_stops(repacked):
    engine = Engine(repacked, 2)
    engine.start()
    try:
        ids = repacked.tokenizer.encode("river " * (3 * CACHE_BLOCK + 5), add_special=True)
        text1, cached1 = run_job(engine, ids)
        other = repacked.tokenizer.encode(" ocean")
        assert other[0] != ids[-1]
        text2, cached2 = run_job(engine, ids[:-1] + other)
    finally:
        engine.stop()
    assert cached1 == 0 and cached2 == len(ids) - 1
    repacked.reset()
    assert text1 == repacked.generate(ids, max_tokens=8, temperature=0).text


def test_the_worker_hands_over_each_steps_events_at_once(model):
    """deliver runs once between steps, after a step's events are sent (and once more when the
    engine stops): the HTTP side wakes its event loop once per step (app.EventPump), not once
    per token of every slot."""
    ids = model.tokenizer.encode("Once upon a time", add_special=True)
    collectors = [Collector(), Collector()]
    sent_before_flush = []
    engine = Engine(model, 2, deliver=lambda: sent_before_flush.append(sum(len(c.events) for c in collectors)))
    engine.start()
    try:
        for c in collectors:
            engine.submit(job(ids, c, max_tokens=8))
        assert all(c.done.wait(120) for c in collectors)
    finally:
        engine.stop()  # joins the worker, which delivers once more on its way out
    total = sum(len(c.events) for c in collectors)
    assert sent_before_flush[-1] == total  # nothing left unflushed
    steps = len(sent_before_flush)
    assert 8 <= steps < total  # a flush per step, not per event
    per_flush = [b - a for a, b in zip(sent_before_flush, sent_before_flush[1:])]
    assert max(per_flush) >= 2  # both slots' tokens of a step went in one flush


def test_the_event_pump_wakes_the_loop_once_per_flush():
    """app.EventPump: events put from the worker's thread reach their queues in order, all of
    a flush through one call_soon_threadsafe (one wake-up of the loop, one GIL hand-over)."""
    import asyncio

    from llamatool.server.app import EventPump

    loop = asyncio.new_event_loop()
    wakeups = []
    real = loop.call_soon_threadsafe
    loop.call_soon_threadsafe = lambda *args: (wakeups.append(args), real(*args))[1]
    pump = EventPump()

    async def receive():
        queues = [asyncio.Queue(), asyncio.Queue()]

        def worker():
            for i in range(5):
                for q in queues:
                    pump.put(loop, q, i)
            pump.flush()

        thread = threading.Thread(target=worker)
        thread.start()
        got = [[await q.get() for _ in range(5)] for q in queues]
        thread.join()
        return got

    assert loop.run_until_complete(receive()) == [list(range(5))] * 2
    assert len(wakeups) == 1
    pump.flush()  # nothing pending: no wake-up
    assert len(wakeups) == 1
    loop.close()
    pump.put(loop, None, 0)
    pump.flush()  # the loop is gone (shutdown): nobody is listening, not an error
