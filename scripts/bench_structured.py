"""Decode overhead of structured output (llguidance's token mask) in `llamatool serve`.

    .venv/bin/python scripts/bench_structured.py [--model PATH] [--tokens 96] [--rounds 5]

Generates greedily from the same chat prompt, alternating free text and a JSON-schema
constrained reply (the server's own JobSampler and Constraint), and reports per-token decode
time for both (median over rounds), plus the time spent computing and applying the mask
inside the constrained runs. The prompt is read before timing starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from llamatool.chat import ChatTemplate  # noqa: E402
from llamatool.generate import Generation  # noqa: E402
from llamatool.model import Model  # noqa: E402
from llamatool.run import chat_prompt_ids  # noqa: E402
from llamatool.sampling import SamplingParams  # noqa: E402
from llamatool.server.engine import Job, JobSampler  # noqa: E402
from llamatool.server.grammar import Grammars  # noqa: E402
from llamatool.server.schemas import ResponseFormat  # noqa: E402

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"},
    "hobbies": {"type": "array", "items": {"type": "string"}}}, "required": ["name", "age", "city", "hobbies"]}


class TimedConstraint:
    """Wraps a Constraint, adding up the time its mask and its token check take."""

    def __init__(self, inner):
        self.inner, self.seconds = inner, 0.0

    def mask(self, logits):
        t = time.perf_counter()
        out = self.inner.mask(logits)
        self.seconds += time.perf_counter() - t
        return out

    def accept(self, token):
        t = time.perf_counter()
        self.inner.accept(token)
        self.seconds += time.perf_counter() - t


def decode(model, ids, tokens, constraint=None):
    """Seconds per generated token after the prompt, and the mask's seconds per token."""
    model.reset()
    job = Job(prompt_ids=ids, max_tokens=tokens, sampling=SamplingParams(temperature=0), emit=lambda e: None,
              constraint=constraint)
    gen = Generation(model, ids, max_tokens=tokens, sampler=JobSampler(job, model.tokenizer), stop_at_eog=constraint is not None)
    steps = iter(gen)
    next(steps)  # the prompt and the first token: not timed
    t, n = time.perf_counter(), 0
    mask0 = constraint.seconds if constraint else 0.0
    for _ in steps:
        n += 1
    elapsed = time.perf_counter() - t
    return elapsed / max(n, 1), ((constraint.seconds - mask0) / max(n, 1) if constraint else 0.0), n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--tokens", type=int, default=96)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    model = Model.load(args.model, n_ctx=1024, n_threads=args.threads)
    ids = chat_prompt_ids(ChatTemplate.from_gguf(model.reader), model.tokenizer,
                          [{"role": "user", "content": "Describe a person as JSON with name, age, city and hobbies."}])
    grammars = Grammars(model.tokenizer, model.args.n_vocab)
    fmt = ResponseFormat.model_validate({"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA}})
    grammars.constraint(fmt)  # builds llguidance's token table once, outside the timing
    free, constrained, mask, lengths = [], [], [], []
    for _ in range(args.rounds):
        free.append(decode(model, ids, args.tokens)[0])
        c = TimedConstraint(grammars.constraint(fmt))
        per_token, mask_per_token, n = decode(model, ids, args.tokens, c)
        constrained.append(per_token)
        mask.append(mask_per_token)
        lengths.append(n)
    f, c, m = (statistics.median(x) * 1000 for x in (free, constrained, mask))
    print(f"free text:     {f:.2f} ms/token ({1000 / f:.1f} t/s)")
    print(f"json_schema:   {c:.2f} ms/token ({1000 / c:.1f} t/s), {statistics.median(lengths)} tokens per reply")
    print(f"mask + check:  {m:.3f} ms/token = {100 * m / (c - m):.1f}% of the unconstrained step; "
          f"end to end {100 * (c / f - 1):+.1f}%")


if __name__ == "__main__":
    main()
