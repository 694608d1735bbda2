"""Request and response bodies of the OpenAI-compatible API, as pydantic models.

Requests are strict: an unknown field, a value of the wrong type (a string where a number
goes: no coercion) or one out of range is a 400, so a client's typo is reported instead of
silently ignored. Ranges follow OpenAI's documentation where it gives one; the rest (top_k,
min_p) follow llama-server. Responses are plain models dumped to JSON (stream chunks are
built in app.py, in the shapes OpenAI streams).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

MAX_STOP_STRINGS = 16
MAX_TOP_LOGPROBS = 20
MAX_PROMPTS = 64  # prompts of one /v1/completions request (each becomes a request of its own)
SEED_MAX = 2**64 - 1


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


NonEmptyText = Annotated[str, Field(min_length=1, max_length=1000)]


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant", "developer"]
    content: Union[str, list[TextPart]]
    name: Optional[str] = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(Strict):
    include_usage: bool = False


class JsonSchemaFormat(Strict):
    name: str = Field(default="response", max_length=256)
    description: Optional[str] = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: Optional[bool] = None

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class ResponseFormat(Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: Optional[JsonSchemaFormat] = None


class Sampling(Strict):
    """The fields both generation endpoints take."""

    model: Optional[str] = None
    max_tokens: Optional[int] = Field(default=None, ge=0)
    temperature: Optional[float] = Field(default=None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    top_k: Optional[int] = Field(default=None, ge=0, le=1_000_000)
    min_p: Optional[float] = Field(default=None, ge=0.0, le=1.0)
    seed: Optional[int] = Field(default=None, ge=0, le=SEED_MAX)
    stop: Union[NonEmptyText, Annotated[list[NonEmptyText], Field(max_length=MAX_STOP_STRINGS)], None] = None
    presence_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: Optional[float] = Field(default=None, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = 1
    response_format: Optional[ResponseFormat] = None
    user: Optional[str] = None

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class ChatRequest(Sampling):
    messages: Annotated[list[Message], Field(min_length=1)]
    max_completion_tokens: Optional[int] = Field(default=None, ge=0)
    logprobs: bool = False
    top_logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)


TokenIds = Annotated[list[int], Field(min_length=1)]


class CompletionRequest(Sampling):
    """prompt: a text, token ids, or a list of either (one choice per prompt, as OpenAI)."""

    prompt: Union[str, TokenIds, Annotated[list[str], Field(min_length=1, max_length=MAX_PROMPTS)],
                  Annotated[list[TokenIds], Field(min_length=1, max_length=MAX_PROMPTS)]]
    logprobs: Optional[int] = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: bool = False

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        return [p] if isinstance(p, str) or isinstance(p[0], int) else list(p)


class TokenizeRequest(Strict):
    content: str
    add_special: bool = False
    with_pieces: bool = False


class DetokenizeRequest(Strict):
    tokens: list[int]


class EmbeddingRequest(Strict):
    input: Union[str, Annotated[list[str], Field(min_length=1)], Annotated[list[int], Field(min_length=1)],
                 Annotated[list[Annotated[list[int], Field(min_length=1)]], Field(min_length=1)]]
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = "float"  # base64: little-endian float32, as OpenAI
    user: Optional[str] = None


# --- responses ---------------------------------------------------------------------------------


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] = Field(default_factory=dict)


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class ChatMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessage
    logprobs: Optional[ChatLogprobs] = None
    finish_reason: str


class _Response(BaseModel):
    id: str
    created: int
    model: str
    usage: Usage
    system_fingerprint: str


class ChatCompletion(_Response):
    object: Literal["chat.completion"] = "chat.completion"
    choices: list[ChatChoice]


class CompletionLogprobs(BaseModel):
    """The legacy completions shape: parallel lists."""

    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    index: int = 0
    text: str
    logprobs: Optional[CompletionLogprobs] = None
    finish_reason: Optional[str] = None


class Completion(_Response):
    object: Literal["text_completion"] = "text_completion"
    choices: list[CompletionChoice]
