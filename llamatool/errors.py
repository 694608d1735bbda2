"""The one exception the command line turns into a one-line message.

Anything the user can cause (a missing or malformed file, an unsupported type, a
prompt longer than the context) raises LlamatoolError with a message that says
what is wrong and where. The CLI prints it as `error: <message>` and exits 1,
without a traceback. Other exceptions are bugs and keep their traceback.
"""


class LlamatoolError(Exception):
    """A user-facing error: its message is printed on one line, without traceback."""


class GGUFError(LlamatoolError):
    """A GGUF file that is malformed, truncated, hostile or of a kind we cannot read."""
