"""`llamatool serve`: an OpenAI-compatible HTTP server (see app.py for the endpoints).

Built on Starlette (routes), uvicorn (HTTP) and pydantic (request bodies), with llguidance
for structured output: the `serve` extra installs them, and only this package imports them.
"""

from .main import ServeOptions, serve_command

__all__ = ["ServeOptions", "serve_command"]
