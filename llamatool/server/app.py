"""The ASGI app: routes, API-key check, body limits, errors, and OpenAI's response shapes.

    GET  /health               public: {"status": "ok"}
    GET  /v1/models            the one model (id: --alias or the file's name)
    POST /v1/chat/completions  messages through the model's sandboxed chat template
    POST /v1/completions       prompt as text or token ids
    POST /tokenize, /detokenize
    GET  /metrics              with --metrics: Prometheus text
    POST /v1/embeddings        with --embeddings: mean-pooled, L2-normalised final hidden states

Generation runs on the engine's worker thread (engine.py); a route submits a Job and turns
its events into one JSON body or, with stream=true, into server-sent events as OpenAI sends
them: a chunk with the role, content deltas, a chunk with finish_reason, a usage chunk when
stream_options.include_usage is set, then `data: [DONE]`.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import threading
import time
import uuid
from dataclasses import dataclass

import numpy as np
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route

from .. import __version__
from ..errors import LlamatoolError
from ..sampling import SamplingParams
from . import schemas as S
from .engine import Delta, Failed, Finished, Job
from .errors import APIError, bad_request, describe_validation, not_found, server_error, too_large, unauthorized

MAX_BODY_BYTES = 8 * 1024 * 1024
FINGERPRINT = f"llamatool-{__version__}"
PUBLIC_PATHS = ("/health",)


@dataclass
class ServerState:
    model: object
    engine: object
    alias: str
    grammars: object  # grammar.Grammars, or None when llguidance is missing
    template: object  # chat.ChatTemplate
    api_key: str | None
    metrics: object | None
    embeddings: bool
    n_slots: int
    pump: EventPump  # the engine's events to the requests (the engine's deliver is pump.flush)

    def __post_init__(self):
        self.created = int(time.time())
        self.prepare_lock = threading.Lock()  # chat templates keep per-render state


# --- request plumbing ------------------------------------------------------------------------------


async def read_body(request: Request, schema):
    """The body validated against schema; too large, malformed, unknown or mistyped: a 4xx."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise too_large(MAX_BODY_BYTES)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise too_large(MAX_BODY_BYTES)
            chunks.append(chunk)
    except ClientDisconnect:
        raise APIError(400, "client disconnected while sending the body", code="client_disconnected") from None
    body = b"".join(chunks)
    if not body.strip():
        raise bad_request("the request needs a JSON body", "missing_body")
    try:
        return schema.model_validate_json(body)
    except ValidationError as e:
        raise bad_request(describe_validation(e), "invalid_request") from None


def check_prompt(state: ServerState, ids: list[int]) -> list[int]:
    n_vocab = state.model.args.n_vocab
    bad = next((t for t in ids if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary (0..{n_vocab - 1})", "invalid_token")
    if not ids:
        raise bad_request("the prompt is empty (no tokens)", "empty_prompt")
    if len(ids) >= state.model.n_ctx:
        raise bad_request(f"the prompt is {len(ids)} tokens; a slot's context holds {state.model.n_ctx} "
                          f"(start the server with a larger -c or fewer -np)", "context_length_exceeded")
    return ids


def sampling_of(req: S.Sampling) -> SamplingParams:
    fields = ("temperature", "top_k", "top_p", "min_p", "seed", "presence_penalty", "frequency_penalty")
    params = SamplingParams(**{f: getattr(req, f) for f in fields if getattr(req, f) is not None})
    try:
        return params.check()
    except LlamatoolError as e:
        raise bad_request(str(e)) from None


def check_common(req: S.Sampling) -> None:
    if req.n != 1:
        raise bad_request(f"n must be 1 (one choice per request), got {req.n}", "unsupported_n")


def usage_of(dones: list[Finished]) -> S.Usage:
    """The usage of a request: summed over its choices (one per prompt)."""
    prompt = sum(d.prompt_tokens for d in dones)
    completion = sum(d.completion_tokens for d in dones)
    return S.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details={"cached_tokens": sum(d.cached_tokens for d in dones)})


# --- generation: a job, its events, and the two response shapes ---------------------------------------


class ChatShape:
    object_name = "chat.completion.chunk"

    def __init__(self, rid: str, created: int, model: str, logprobs: bool):
        self.rid, self.created, self.model, self.logprobs = rid, created, model, logprobs

    def _chunk(self, choice: dict, usage=None) -> dict:
        out = {"id": self.rid, "object": self.object_name, "created": self.created, "model": self.model,
               "system_fingerprint": FINGERPRINT, "choices": [choice] if choice is not None else []}
        if usage is not None:
            out["usage"] = usage.model_dump()
        return out

    def first(self, index: int):
        return self._chunk({"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                            "finish_reason": None})

    def delta(self, d: Delta, index: int) -> dict:
        logprobs = {"content": d.logprobs} if self.logprobs else None
        return self._chunk({"index": index, "delta": {"content": d.text}, "logprobs": logprobs, "finish_reason": None})

    def final(self, done: Finished, index: int) -> dict:
        return self._chunk({"index": index, "delta": {}, "logprobs": None, "finish_reason": done.reason})

    def usage(self, dones: list[Finished]) -> dict:
        return self._chunk(None, usage_of(dones))

    def choice(self, deltas: list[Delta], done: Finished, index: int):
        logprobs = S.ChatLogprobs(content=[e for d in deltas for e in d.logprobs]) if self.logprobs else None
        return S.ChatChoice(index=index, message=S.ChatMessage(content="".join(d.text for d in deltas)), logprobs=logprobs,
                            finish_reason=done.reason)

    def body(self, results: list[tuple[list[Delta], Finished]]) -> dict:
        return S.ChatCompletion(id=self.rid, created=self.created, model=self.model,
                                choices=[self.choice(d, f, i) for i, (d, f) in enumerate(results)],
                                usage=usage_of([f for _, f in results]), system_fingerprint=FINGERPRINT).model_dump()


class CompletionShape(ChatShape):
    """With echo, each choice's text starts with its prompt (echo[i])."""

    object_name = "text_completion"

    def __init__(self, rid: str, created: int, model: str, logprobs: bool, echo: list[str] | None = None):
        super().__init__(rid, created, model, logprobs)
        self.echo = echo

    def first(self, index: int):
        return self._chunk({"index": index, "text": self.echo[index], "logprobs": None, "finish_reason": None}) \
            if self.echo else None

    def _logprobs(self, deltas: list[Delta], offset: int = 0):
        if not self.logprobs:
            return None
        entries = [e for d in deltas for e in d.logprobs]
        offsets, at = [], offset
        for e in entries:
            offsets.append(at)
            at += len(e["token"])
        return S.CompletionLogprobs(tokens=[e["token"] for e in entries], token_logprobs=[e["logprob"] for e in entries],
                                    top_logprobs=[{t["token"]: t["logprob"] for t in e["top_logprobs"]} for e in entries],
                                    text_offset=offsets).model_dump()

    def delta(self, d: Delta, index: int) -> dict:
        return self._chunk({"index": index, "text": d.text, "logprobs": self._logprobs([d]), "finish_reason": None})

    def final(self, done: Finished, index: int) -> dict:
        return self._chunk({"index": index, "text": "", "logprobs": None, "finish_reason": done.reason})

    def choice(self, deltas: list[Delta], done: Finished, index: int):
        text = (self.echo[index] if self.echo else "") + "".join(d.text for d in deltas)
        return S.CompletionChoice(index=index, text=text, logprobs=self._logprobs(deltas), finish_reason=done.reason)

    def body(self, results: list[tuple[list[Delta], Finished]]) -> dict:
        return S.Completion(id=self.rid, created=self.created, model=self.model,
                            choices=[self.choice(d, f, i) for i, (d, f) in enumerate(results)],
                            usage=usage_of([f for _, f in results]), system_fingerprint=FINGERPRINT).model_dump()


class EventPump:
    """Carries the worker's events to the requests' queues on the event loop: put() as the
    worker sends them, flush() between its steps (Engine's deliver), one wake-up of the
    loop per step. A wake-up per event (call_soon_threadsafe writes the loop's self-pipe, and
    that write lets the loop thread take the GIL) had the worker hand the GIL over and wait
    for it back once per token of every slot: 2 ms of a 21 ms step at 8 slots, measured."""

    def __init__(self):
        self._lock = threading.RLock()  # flush may run in a signal handler (Engine.stop_accepting)
        self._pending: list = []  # (loop, queue, item)

    def put(self, loop, queue: asyncio.Queue, item) -> None:
        with self._lock:
            self._pending.append((loop, queue, item))

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, []
        by_loop: dict = {}
        for loop, queue, item in batch:
            by_loop.setdefault(loop, []).append((queue, item))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # the event loop is gone (shutdown): nobody is listening
                pass


def _deliver(items) -> None:
    for queue, item in items:
        queue.put_nowait(item)


def submit_jobs(state: ServerState, requests: list[dict]) -> tuple[list[Job], asyncio.Queue]:
    """One job per choice; their events arrive on one queue as (choice index, event)."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue = asyncio.Queue()

    def emitter(index: int):
        def emit(event) -> None:
            state.pump.put(loop, events, (index, event))

        return emit

    jobs = [Job(emit=emitter(i), **fields) for i, fields in enumerate(requests)]
    try:
        for job in jobs:
            state.engine.submit(job)
    except APIError:
        _cancel(jobs)
        raise
    return jobs, events


def _cancel(jobs: list[Job]) -> None:
    for job in jobs:
        job.cancel()  # no-op once finished; frees the slot of one still running


async def respond(request: Request, state: ServerState, req: S.Sampling, shape: ChatShape, requests: list[dict]):
    jobs, events = submit_jobs(state, requests)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return StreamingResponse(stream_events(jobs, events, shape, include_usage), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    deltas: list[list[Delta]] = [[] for _ in jobs]
    done: dict[int, Finished] = {}
    try:
        while len(done) < len(jobs):
            try:
                index, event = await asyncio.wait_for(events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    return PlainTextResponse("", status_code=499)
                continue
            if isinstance(event, Delta):
                deltas[index].append(event)
            elif isinstance(event, Failed):
                return event.error.response()
            else:
                done[index] = event
        return JSONResponse(shape.body([(deltas[i], done[i]) for i in range(len(jobs))]))
    finally:
        _cancel(jobs)  # frees the slots if this handler was cancelled or one choice failed


def sse(data) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


async def stream_events(jobs: list[Job], events: asyncio.Queue, shape: ChatShape, include_usage: bool):
    try:
        for index in range(len(jobs)):
            first = shape.first(index)
            if first is not None:
                yield sse(first)
        done: dict[int, Finished] = {}
        while len(done) < len(jobs):
            index, event = await events.get()
            if isinstance(event, Delta):
                yield sse(shape.delta(event, index))
            elif isinstance(event, Failed):
                yield sse(event.error.body())
                break
            else:
                done[index] = event
                yield sse(shape.final(event, index))
        else:
            if include_usage:
                yield sse(shape.usage([done[i] for i in range(len(jobs))]))
        yield "data: [DONE]\n\n"
    finally:
        _cancel(jobs)  # a client that went away frees its slots at the worker's next step


# --- routes ------------------------------------------------------------------------------------------


def _state(request: Request) -> ServerState:
    return request.app.state.server


async def health(request: Request):
    return JSONResponse({"status": "ok"})


async def models(request: Request):
    st = _state(request)
    a = st.model.args
    meta = {"n_vocab": a.n_vocab, "n_ctx_train": a.n_ctx_train, "n_embd": a.n_embd, "n_ctx_slot": st.model.n_ctx,
            "slots": st.n_slots}
    return JSONResponse({"object": "list", "data": [
        {"id": st.alias, "object": "model", "created": st.created, "owned_by": "llamatool", "meta": meta}]})


async def chat_completions(request: Request):
    st = _state(request)
    req = await read_body(request, S.ChatRequest)
    check_common(req)
    constraint = await run_in_threadpool(_constraint, st, req.response_format)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    ids = check_prompt(st, await run_in_threadpool(_chat_ids, st, messages))
    max_tokens = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    top = (req.top_logprobs or 0) if req.logprobs else None
    shape = ChatShape(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), st.alias, req.logprobs)
    return await respond(request, st, req, shape, [dict(
        prompt_ids=ids, max_tokens=-1 if max_tokens is None else max_tokens, sampling=sampling_of(req),
        stops=req.stop_strings(), top_logprobs=top, constraint=constraint)])


async def completions(request: Request):
    st = _state(request)
    req = await read_body(request, S.CompletionRequest)
    check_common(req)
    if req.echo and req.logprobs is not None:
        raise bad_request("echo with logprobs is not supported: the prompt tokens' log-probabilities would need "
                          "logits at every prompt position", "unsupported_echo_logprobs")
    prompts = req.prompts()
    ids = [check_prompt(st, await run_in_threadpool(_encode, st, p) if isinstance(p, str) else list(p)) for p in prompts]
    echo = [p if isinstance(p, str) else st.model.tokenizer.decode(i) for p, i in zip(prompts, ids)] if req.echo else None
    shape = CompletionShape(f"cmpl-{uuid.uuid4().hex}", int(time.time()), st.alias, req.logprobs is not None, echo)
    # every prompt its own job (each with its own grammar state): they run side by side in the slots
    requests = [dict(prompt_ids=i, max_tokens=-1 if req.max_tokens is None else req.max_tokens, sampling=sampling_of(req),
                     stops=req.stop_strings(), top_logprobs=req.logprobs,
                     constraint=await run_in_threadpool(_constraint, st, req.response_format)) for i in ids]
    return await respond(request, st, req, shape, requests)


async def tokenize(request: Request):
    st = _state(request)
    req = await read_body(request, S.TokenizeRequest)
    tok = st.model.tokenizer
    ids = await run_in_threadpool(tok.encode, req.content, req.add_special, True)
    if not req.with_pieces:
        return JSONResponse({"tokens": ids})
    pieces = [{"id": t, "piece": tok.token_to_piece(t).decode("utf-8", "replace")} for t in ids]
    return JSONResponse({"tokens": pieces})


async def detokenize(request: Request):
    st = _state(request)
    req = await read_body(request, S.DetokenizeRequest)
    n_vocab = st.model.tokenizer.n_vocab
    bad = next((t for t in req.tokens if not 0 <= t < n_vocab), None)
    if bad is not None:
        raise bad_request(f"token id {bad} is outside the vocabulary (0..{n_vocab - 1})", "invalid_token")
    return JSONResponse({"content": st.model.tokenizer.decode(req.tokens)})


async def metrics(request: Request):
    st = _state(request)
    if st.metrics is None:
        raise not_found("metrics are off (start the server with --metrics)")
    text = st.metrics.render(st.engine.busy_slots, st.engine.waiting, st.n_slots)
    return PlainTextResponse(text, media_type="text/plain; version=0.0.4")


async def embeddings(request: Request):
    st = _state(request)
    if not st.embeddings:
        raise not_found("embeddings are off (start the server with --embeddings)")
    req = await read_body(request, S.EmbeddingRequest)
    inputs = req.input
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        inputs = [inputs]
    batches = []
    for item in inputs:
        ids = await run_in_threadpool(_encode, st, item) if isinstance(item, str) else list(item)
        batches.append(check_prompt(st, ids))
    vectors = await asyncio.wrap_future(st.engine.call(lambda model: [_embed(model, ids) for ids in batches]))
    n = sum(len(ids) for ids in batches)
    if req.encoding_format == "base64":
        vectors = [base64.b64encode(np.asarray(v, "<f4").tobytes()).decode() for v in vectors]
    return JSONResponse({"object": "list", "model": st.alias,
                         "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


def _embed(model, ids: list[int]) -> list[float]:
    hidden = model.hidden_states(ids).astype(np.float64)
    mean = hidden.mean(axis=0)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else mean).tolist()


def _encode(st: ServerState, text: str) -> list[int]:
    return st.model.tokenizer.encode(text, add_special=True, parse_special=True)


def _chat_ids(st: ServerState, messages: list[dict]) -> list[int]:
    from ..run import chat_prompt_ids

    with st.prepare_lock:
        try:
            return chat_prompt_ids(st.template, st.model.tokenizer, messages)
        except LlamatoolError as e:
            raise bad_request(str(e), "chat_template") from None


def _constraint(st: ServerState, response_format):
    if response_format is None or response_format.type == "text":
        return None
    if st.grammars is None:
        raise APIError(501, "response_format needs llguidance (pip install 'llamatool[serve]')", "server_error",
                       "not_implemented")
    return st.grammars.constraint(response_format)


# --- the app ---------------------------------------------------------------------------------------


class APIKeyMiddleware:
    """401 unless the request carries the key (Authorization: Bearer KEY, or X-Api-Key);
    /health stays public. Keys are compared in constant time."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"] not in PUBLIC_PATHS and not self._allowed(scope):
            response = unauthorized().response()
            response.headers["WWW-Authenticate"] = "Bearer"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _allowed(self, scope) -> bool:
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"authorization", b"")
        if given[:7].lower() == b"bearer ":
            given = given[7:].strip()
        else:
            given = headers.get(b"x-api-key", b"")
        return hmac.compare_digest(given, self.key)


async def _api_error(request: Request, exc: APIError):
    return exc.response()


async def _user_error(request: Request, exc: LlamatoolError):
    return bad_request(str(exc)).response()


async def _http_error(request: Request, exc: HTTPException):
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}", "invalid_request_error",
                    kind).response()


async def _unexpected(request: Request, exc: Exception):
    import sys
    import traceback

    traceback.print_exception(exc, file=sys.stderr)
    return server_error(f"internal error: {type(exc).__name__}").response()


def create_app(state: ServerState) -> Starlette:
    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/models", models, methods=["GET"]),
        Route("/v1/chat/completions", chat_completions, methods=["POST"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/v1/completions", completions, methods=["POST"]),
        Route("/completions", completions, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/detokenize", detokenize, methods=["POST"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/embeddings", embeddings, methods=["POST"]),
        Route("/embeddings", embeddings, methods=["POST"]),
    ]
    handlers = {APIError: _api_error, LlamatoolError: _user_error, HTTPException: _http_error, Exception: _unexpected}
    app = Starlette(routes=routes, exception_handlers=handlers)
    app.state.server = state
    if state.api_key:
        app.add_middleware(APIKeyMiddleware, api_key=state.api_key)
    return app
