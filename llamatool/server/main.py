"""Start-up and shutdown of `llamatool serve`.

The model loads first (a server that answers is a server that can generate), the socket is
bound (a busy port is a one-line error), one line says where it listens, then uvicorn
serves until SIGINT/SIGTERM: the engine cancels every request in flight, open streams end,
and the process exits 0.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

from ..errors import LlamatoolError

API_KEY_ENV = "LLAMATOOL_API_KEY"
SHUTDOWN_GRACE_SECONDS = 5


@dataclass
class ServeOptions:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 8192  # shared by the slots, as llama-server's -c
    slots: int = 4
    threads: int | None = None
    api_key: str | None = None
    alias: str | None = None
    metrics: bool = False
    embeddings: bool = False
    repack: bool | None = None  # quantized matrices packed at load (Model.load's repack; None: when compact)
    lora: tuple = ()  # LoRA adapters, (path, scale) pairs, applied to every request

    def check(self) -> "ServeOptions":
        if self.slots < 1:
            raise LlamatoolError(f"-np must be at least 1, got {self.slots}")
        if not 0 <= self.port <= 65535:
            raise LlamatoolError(f"--port must be 0..65535, got {self.port}")
        if self.ctx_size < 0:
            raise LlamatoolError(f"-c must be 0 (the model's trained context) or positive, got {self.ctx_size}")
        return self


def _imports():
    try:
        import pydantic  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as e:
        raise LlamatoolError(f"`llamatool serve` needs the serve extra: pip install 'llamatool[serve]' ({e.name} is missing)") from None
    return uvicorn


def _grammars(model):
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return None
    from .grammar import Grammars

    return Grammars(model.tokenizer, model.args.n_vocab)


def _bind(host: str, port: int) -> socket.socket:
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as e:
        raise LlamatoolError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def _slot_context(opts: ServeOptions, n_ctx_train: int) -> int:
    total = opts.ctx_size or n_ctx_train
    per_slot = total // opts.slots
    if per_slot < 16:
        raise LlamatoolError(f"-c {total} split over {opts.slots} slots leaves {per_slot} tokens each; give a larger -c")
    return per_slot


def serve_command(opts: ServeOptions) -> None:
    uvicorn = _imports()
    opts.check()
    from ..chat import ChatTemplate
    from ..gguf_io import GGUFReader
    from ..model import Model, ModelArgs
    from .app import EventPump, ServerState, create_app
    from .engine import Engine
    from .metrics import Metrics

    api_key = opts.api_key or os.environ.get(API_KEY_ENV) or None
    n_ctx = _slot_context(opts, ModelArgs.from_gguf(GGUFReader(opts.model)).n_ctx_train)
    model = Model.load(opts.model, n_ctx=n_ctx, n_threads=opts.threads, lora=opts.lora, repack=opts.repack)
    model.tokenizer  # a server without a tokenizer cannot take text: fail now, in one line
    metrics = Metrics() if opts.metrics else None
    pump = EventPump()
    engine = Engine(model, opts.slots, metrics, deliver=pump.flush)
    state = ServerState(model=model, engine=engine, alias=opts.alias or model.path.stem,
                        grammars=_grammars(model), template=ChatTemplate.from_gguf(model.reader), api_key=api_key,
                        metrics=metrics, embeddings=opts.embeddings, n_slots=opts.slots, pump=pump)
    sock = _bind(opts.host, opts.port)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    engine.start()
    config = uvicorn.Config(create_app(state), log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_SECONDS)
    server = _Server(config, engine)
    print(f"llamatool serve: http://{shown}:{port} model {state.alias} ({model.args.n_layer} layers), {opts.slots} slots x "
          f"{n_ctx} tokens, {model.n_threads} threads{_repacked(model)}{', API key required' if api_key else ''}", file=sys.stderr, flush=True)
    try:
        server.run(sockets=[sock])
    finally:
        engine.stop()
        sock.close()
    print("llamatool serve: stopped", file=sys.stderr, flush=True)


def _repacked(model) -> str:
    size = model.weights.packed.nbytes
    return f", weights repacked ({size / 2**20:.0f} MiB)" if size else ", weights as in the file"


class _Server:
    """uvicorn's Server whose SIGINT/SIGTERM first cancel every request (so open streams end
    and the graceful shutdown is quick), and which then returns instead of re-raising the
    signal: the process exits 0."""

    def __new__(cls, config, engine):
        import uvicorn

        class Server(uvicorn.Server):
            def handle_exit(self, sig, frame):
                engine.stop_accepting()
                if self.should_exit and sig == signal.SIGINT:
                    self.force_exit = True
                self.should_exit = True

        return Server(config)
