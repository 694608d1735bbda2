"""`llamatool serve` over real HTTP: the openai client and raw requests against a server
started on a free loopback port with the default model (tests/server_harness.py)."""

from __future__ import annotations

import concurrent.futures
import json
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("starlette", reason="the serve extra is not installed (pip install 'llamatool[serve]')")
httpx = pytest.importorskip("httpx", reason="the test extra is not installed")
openai = pytest.importorskip("openai", reason="the test extra is not installed")
jsonschema = pytest.importorskip("jsonschema", reason="the test extra is not installed")

from llamatool.server.engine import CACHE_BLOCK  # noqa: E402

from .server_harness import ServerProcess  # noqa: E402

KEY = "test-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
SLOTS = 8
CTX = 8192  # 1024 tokens per slot
PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three colors.",
    "How many legs does a spider have?",
    "Say hello in Spanish.",
    "What is 2 + 2?",
    "Name a famous scientist.",
    "What is the opposite of hot?",
]


@pytest.fixture(scope="module")
def server(default_model):
    srv = ServerProcess(default_model, "-np", str(SLOTS), "-c", str(CTX), "--metrics", "--embeddings", "--alias", "smol",
                        env={"LLAMATOOL_API_KEY": KEY})
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as c:
        yield c


def chat(client, content, **kw):
    kw.setdefault("temperature", 0)
    kw.setdefault("max_tokens", 24)
    return client.chat.completions.create(model="smol", messages=[{"role": "user", "content": content}], **kw)


def sse_events(response) -> list:
    """The data of every server-sent event, in order (JSON decoded, "[DONE]" kept as is)."""
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
        else:
            assert line == "", f"unexpected line in the event stream: {line!r}"
    return out


def assert_error(r, status):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "code"} and err["message"] and "\n" not in err["message"]
    return err


# --- start-up, health, models, auth -------------------------------------------------------------------


def test_startup_line_health_and_models(server, http):
    assert "smol" in server.first_line and f"{SLOTS} slots x {CTX // SLOTS} tokens" in server.first_line
    assert httpx.get(server.url + "/health").json() == {"status": "ok"}  # public: no key
    data = http.get("/v1/models").json()["data"]
    assert [m["id"] for m in data] == ["smol"] and data[0]["meta"]["n_ctx_slot"] == CTX // SLOTS


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {KEY}x"},
                                     {"Authorization": KEY}, {"X-Api-Key": "nope"}])
def test_missing_or_wrong_key_is_401(server, headers):
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/metrics")):
        r = httpx.request(method, server.url + path, headers=headers, json={})
        assert_error(r, 401)


def test_openai_client_with_a_wrong_key_gets_authentication_error(server):
    bad = openai.OpenAI(base_url=server.url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


# --- chat and completions -------------------------------------------------------------------------------


def test_chat_completion(client):
    r = chat(client, "What is the capital of France?", max_tokens=32)
    c = r.choices[0]
    assert r.object == "chat.completion" and r.model == "smol" and c.message.role == "assistant"
    assert c.message.content.strip()
    assert c.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > 5 and 0 < u.completion_tokens <= 32 and u.total_tokens == u.prompt_tokens + u.completion_tokens


def test_max_tokens_gives_finish_reason_length(client, http):
    r = chat(client, "Count from one to one hundred in words.", max_tokens=5)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
    body = http.post("/v1/completions", json={"prompt": "1, 2, 3,", "max_tokens": 4, "temperature": 0}).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 4


def test_completion_from_text_and_from_token_ids_agree(client, http):
    ids = http.post("/tokenize", json={"content": "The three primary colors are", "add_special": True}).json()["tokens"]
    a = client.completions.create(model="smol", prompt="The three primary colors are", max_tokens=12, temperature=0)
    b = client.completions.create(model="smol", prompt=ids, max_tokens=12, temperature=0)
    assert a.choices[0].text == b.choices[0].text and a.choices[0].text.strip()
    assert a.usage.prompt_tokens == len(ids)


def test_chat_matches_the_python_api(default_model, client):
    """The server's greedy chat reply is the one llamatool's own generate() gives for the
    same rendered conversation (with the weights repacked, as the server has them)."""
    from llamatool.chat import ChatTemplate
    from llamatool.model import Model
    from llamatool.run import chat_prompt_ids

    model = Model.load(default_model, n_ctx=CTX // SLOTS, repack=True)  # the weights as the server lays them out
    ids = chat_prompt_ids(ChatTemplate.from_gguf(model.reader), model.tokenizer,
                          [{"role": "user", "content": PROMPTS[1]}])
    want = model.generate(ids, max_tokens=20, temperature=0)
    got = chat(client, PROMPTS[1], max_tokens=20)
    assert got.choices[0].message.content == want.text
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == len(want.tokens)


# --- streaming ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream_shape_and_text(http, client, include_usage):
    body = {"messages": [{"role": "user", "content": "Describe the moon in two sentences."}], "max_tokens": 40,
            "temperature": 0, "stream": True}
    if include_usage:
        body["stream_options"] = {"include_usage": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert all(c["object"] == "chat.completion.chunk" and c["id"] == chunks[0]["id"] for c in chunks)
    if include_usage:
        usage_chunk = chunks.pop()
        assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] > 0
    assert all("usage" not in c for c in chunks)
    final = chunks[-1]["choices"][0]
    assert final["delta"] == {} and final["finish_reason"] in ("stop", "length")
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-1]]
    assert all(d for d in deltas) and all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])
    whole = chat(client, "Describe the moon in two sentences.", max_tokens=40).choices[0].message.content
    assert "".join(deltas) == whole


def test_openai_client_stream_equals_non_stream(client):
    for prompt in PROMPTS[:3]:
        pieces, finish = [], None
        for chunk in chat(client, prompt, max_tokens=30, stream=True):
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        whole = chat(client, prompt, max_tokens=30).choices[0]
        assert "".join(pieces) == whole.message.content and finish == whole.finish_reason


def test_completion_stream_equals_non_stream(client):
    stream = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=30, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    whole = client.completions.create(model="smol", prompt="Once upon a time", max_tokens=30, temperature=0)
    assert text == whole.choices[0].text
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens == 30


def test_streamed_text_is_whole_utf8(http):
    """Deltas are valid strings (the JSON would not decode otherwise) and their bytes join to
    the non-streamed reply, for text full of multi-byte characters."""
    body = {"messages": [{"role": "user", "content": "Write the word 'naïve' and some emoji like 😀🎉 and Japanese 日本語."}],
            "max_tokens": 48, "temperature": 0}
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
        events = sse_events(r)
    deltas = [e["choices"][0]["delta"].get("content", "") for e in events[1:-2]]
    assert "".join(deltas) == whole and "\ufffd" not in whole
    assert any(ord(ch) > 127 for ch in whole)


# --- stop strings ---------------------------------------------------------------------------------------


def test_stop_strings_cut_the_text_streamed_or_not(client):
    prompt = "Write a short story about a cat named Tom."
    full = chat(client, prompt, max_tokens=48).choices[0].message.content
    assert len(full) > 30
    for stop in (full[10:16], full[20:21], [full[25:29], "no such text"]):
        first = stop if isinstance(stop, str) else stop[0]
        want = full[: full.find(first)]
        r = chat(client, prompt, max_tokens=48, stop=stop)
        assert r.choices[0].message.content == want and r.choices[0].finish_reason == "stop"
        pieces = [c.choices[0].delta.content or "" for c in chat(client, prompt, max_tokens=48, stop=stop, stream=True)
                  if c.choices]
        assert "".join(pieces) == want  # nothing of the stop string leaked into any chunk


# --- logprobs, seeds --------------------------------------------------------------------------------------


def test_chat_logprobs_match_the_model(default_model, client):
    from llamatool.model import Model

    r = chat(client, "Name a fruit.", max_tokens=6, logprobs=True, top_logprobs=3)
    entries = r.choices[0].logprobs.content
    assert len(entries) == r.usage.completion_tokens == 6
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.token == e.top_logprobs[0].token  # greedy: the chosen token is the best one
    # the first token's log-probability under the model itself, from the Python API
    model = Model.load(default_model, n_ctx=CTX // SLOTS, repack=True)  # the weights as the server lays them out
    prompt_tokens = r.usage.prompt_tokens
    from llamatool.chat import ChatTemplate
    from llamatool.run import chat_prompt_ids

    ids = chat_prompt_ids(ChatTemplate.from_gguf(model.reader), model.tokenizer, [{"role": "user", "content": "Name a fruit."}])
    assert len(ids) == prompt_tokens
    logits = model.eval(ids).astype(np.float64)
    logprobs = logits - logits.max() - np.log(np.exp(logits - logits.max()).sum())
    assert entries[0].logprob == pytest.approx(logprobs.max(), abs=1e-4)
    assert bytes(entries[0].bytes) == model.tokenizer.token_to_piece(int(np.argmax(logits)), special=False)


def test_completion_logprobs_shape(http):
    body = http.post("/v1/completions", json={"prompt": "The sky is", "max_tokens": 5, "temperature": 0, "logprobs": 2}).json()
    lp = body["choices"][0]["logprobs"]
    assert len(lp["tokens"]) == len(lp["token_logprobs"]) == len(lp["top_logprobs"]) == 5
    assert "".join(lp["tokens"]) == body["choices"][0]["text"]
    assert lp["text_offset"][0] == 0 and all(len(t) == 2 for t in lp["top_logprobs"])


def test_streamed_logprobs_arrive_with_the_text_they_complete(http):
    """Each streamed chunk carries the log-probabilities of exactly the tokens its text
    completes; with a stop string, those of tokens held back go out with the last chunk."""
    body = {"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0, "logprobs": 1, "stream": True,
            "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/completions", json=body) as r:
        events = sse_events(r)
    chunks = [e["choices"][0] for e in events if isinstance(e, dict) and e["choices"] and e["choices"][0]["text"]]
    assert chunks and all("".join(c["logprobs"]["tokens"]) == c["text"] for c in chunks)
    assert sum(len(c["logprobs"]["tokens"]) for c in chunks) == events[-2]["usage"]["completion_tokens"] == 24
    text = "".join(c["text"] for c in chunks)
    stop = text[12:15]
    with http.stream("POST", "/v1/completions", json={**body, "stop": stop}) as r:
        events = sse_events(r)
    choices = [e["choices"][0] for e in events if isinstance(e, dict) and e["choices"] and e["choices"][0]["logprobs"]]
    assert "".join(c["text"] for c in choices) == text[: text.find(stop)]
    assert sum(len(c["logprobs"]["tokens"]) for c in choices) == events[-2]["usage"]["completion_tokens"]
    sent = tokens = ""
    for c in choices[:-1]:  # a token whose text is partly held back goes out with the rest of it
        sent += c["text"]
        tokens += "".join(c["logprobs"]["tokens"])
        assert sent.startswith(tokens)


def test_completion_echo(http):
    body = {"prompt": "The sky is", "max_tokens": 6, "temperature": 0}
    plain = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    echoed = http.post("/v1/completions", json={**body, "echo": True}).json()["choices"][0]["text"]
    assert echoed == "The sky is" + plain
    with http.stream("POST", "/v1/completions", json={**body, "echo": True, "stream": True}) as r:
        events = sse_events(r)
    assert events[0]["choices"][0]["text"] == "The sky is"
    assert "".join(e["choices"][0]["text"] for e in events[:-1] if e["choices"]) == echoed
    ids = http.post("/tokenize", json={"content": "The sky is"}).json()["tokens"]
    from_ids = http.post("/v1/completions", json={**body, "prompt": ids, "echo": True}).json()["choices"][0]["text"]
    assert from_ids == echoed
    assert_error(http.post("/v1/completions", json={**body, "echo": True, "logprobs": 1}), 400)


def test_completion_with_a_list_of_prompts(client, http):
    """One choice per prompt (as OpenAI), each the text the prompt gives alone; usage sums."""
    prompts = ["The sky is", "Two plus two is", "My favourite animal is"]
    alone = [client.completions.create(model="smol", prompt=p, max_tokens=8, temperature=0) for p in prompts]
    many = client.completions.create(model="smol", prompt=prompts, max_tokens=8, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2]
    assert [c.text for c in many.choices] == [a.choices[0].text for a in alone]
    assert many.usage.completion_tokens == sum(a.usage.completion_tokens for a in alone)
    assert many.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    streamed = ["", "", ""]
    for chunk in client.completions.create(model="smol", prompt=prompts, max_tokens=8, temperature=0, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.text
    assert streamed == [c.text for c in many.choices]
    ids = [http.post("/tokenize", json={"content": p}).json()["tokens"] for p in prompts]
    from_ids = http.post("/v1/completions", json={"prompt": ids, "max_tokens": 8, "temperature": 0}).json()
    assert [c["text"] for c in from_ids["choices"]] == streamed
    for bad in ([], [[]], ["a", [1]], ["x"] * 65):
        assert_error(http.post("/v1/completions", json={"prompt": bad, "max_tokens": 2}), 400)


def test_seed_reproducibility(client):
    kw = dict(temperature=1.0, top_p=1.0, max_tokens=24, extra_body={"top_k": 0, "min_p": 0.0})
    a = [chat(client, "Tell me something surprising.", seed=s, **kw).choices[0].message.content for s in (7, 7, 8, 9)]
    assert a[0] == a[1]
    assert len({a[0], a[2], a[3]}) > 1  # other seeds draw other tokens


# --- structured output --------------------------------------------------------------------------------


SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer", "minimum": 0,
                                                                                          "maximum": 150}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "object", "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                                 "minItems": 1, "maxItems": 3}},
     "required": ["colors"], "additionalProperties": False},
    {"type": "object", "properties": {"ok": {"type": "boolean"}, "score": {"type": "number"},
                                      "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 2}},
     "required": ["ok", "score", "tags"], "additionalProperties": False},
]


@pytest.mark.parametrize("schema", SCHEMAS)
def test_json_schema_outputs_validate(client, schema):
    for seed, temperature in ((1, 0.0), (2, 1.0), (3, 1.0)):
        r = chat(client, "Describe a person as JSON.", max_tokens=120, seed=seed, temperature=temperature,
                 response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema, "strict": True}})
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_object_output_parses(client):
    for seed in (1, 2):
        r = chat(client, "Give me some data.", max_tokens=120, seed=seed, temperature=1.0,
                 response_format={"type": "json_object"})
        assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_json_schema_streamed_equals_non_streamed(client):
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": SCHEMAS[0]}}
    whole = chat(client, "A person, please.", max_tokens=80, response_format=fmt).choices[0].message.content
    pieces = [c.choices[0].delta.content or "" for c in chat(client, "A person, please.", max_tokens=80,
                                                               response_format=fmt, stream=True) if c.choices]
    assert "".join(pieces) == whole
    jsonschema.validate(json.loads(whole), SCHEMAS[0])


# --- tokenize, embeddings, metrics ----------------------------------------------------------------------


def test_tokenize_detokenize_round_trip(http):
    for text in ["Hello, world!", "naïve café 日本語 😀", "  spaces\n\nand\ttabs ", "<|im_start|>user"]:
        ids = http.post("/tokenize", json={"content": text}).json()["tokens"]
        assert ids and all(isinstance(t, int) for t in ids)
        assert http.post("/detokenize", json={"tokens": ids}).json()["content"] == text
    pieces = http.post("/tokenize", json={"content": "Hello world", "with_pieces": True}).json()["tokens"]
    assert "".join(p["piece"] for p in pieces) == "Hello world"


def test_embeddings(client, http):
    texts = ["The cat sat on the mat.", "A cat was sitting on a rug.", "Quarterly revenue grew by four percent."]
    r = client.embeddings.create(model="smol", input=texts)
    vectors = np.array([d.embedding for d in r.data])
    assert vectors.shape[0] == 3 and vectors.shape[1] == http.get("/v1/models").json()["data"][0]["meta"]["n_embd"]
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    single = np.array(client.embeddings.create(model="smol", input=texts[1]).data[0].embedding)
    assert np.array_equal(single, vectors[1])  # the same text gives the same vector, alone or in a list
    sim = vectors @ vectors.T
    assert sim[0, 1] > sim[0, 2] and sim[0, 1] > sim[1, 2]
    assert r.usage.prompt_tokens > 10


def test_embeddings_are_mean_pooled_normalised_hidden_states(default_model, http):
    from llamatool.model import Model

    model = Model.load(default_model, n_ctx=256, repack=True)
    ids = model.tokenizer.encode("Pooling check.", add_special=True, parse_special=True)
    hidden = model.hidden_states(ids).astype(np.float64)
    want = hidden.mean(0) / np.linalg.norm(hidden.mean(0))
    got = np.array(http.post("/v1/embeddings", json={"input": ids}).json()["data"][0]["embedding"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    # the final-norm hidden state of the last token is what the output layer turns into logits
    logits = model.eval(ids)
    assert int(np.argmax(logits)) == int(np.argmax(model.hidden_states(ids)[-1] @ _output_matrix(model).T))


def _output_matrix(model):
    reader = model.reader
    name = "output.weight" if reader.has_tensor("output.weight") else "token_embd.weight"
    return reader.tensor(name).values().reshape(model.args.n_vocab, model.args.n_embd)


def test_metrics(http):
    text = http.get("/metrics").text
    for name in ("requests_total", "prompt_tokens_total", "tokens_predicted_total", "requests_processing",
                 "requests_deferred"):
        assert f"# TYPE llamatool:{name}" in text
    assert int(_metric(text, "tokens_predicted_total")) > 0


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(f"llamatool:{name} "):
            return float(line.split()[1])
    raise AssertionError(f"no metric {name}")


# --- bad input ----------------------------------------------------------------------------------------


BAD_BODIES = [
    ("malformed JSON", "/v1/chat/completions", b'{"messages": [', 400),
    ("not an object", "/v1/chat/completions", b"[1, 2]", 400),
    ("empty body", "/v1/chat/completions", b"", 400),
    ("unknown field", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "bogus": 1}, 400),
    ("wrong type", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": "5"}, 400),
    ("messages not a list", "/v1/chat/completions", {"messages": "hi"}, 400),
    ("no messages", "/v1/chat/completions", {"messages": []}, 400),
    ("bad role", "/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400),
    ("negative max_tokens", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}, 400),
    ("absurd temperature", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "temperature": 1e9}, 400),
    ("NaN top_p", "/v1/completions", b'{"prompt": "x", "top_p": NaN}', 400),
    ("absurd top_logprobs", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 1000}, 400),
    ("absurd seed", "/v1/completions", {"prompt": "x", "seed": 2**70}, 400),
    ("n=2", "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2}, 400),
    ("n=0", "/v1/completions", {"prompt": "x", "n": 0}, 400),
    ("empty stop", "/v1/completions", {"prompt": "x", "stop": ""}, 400),
    ("token id too large", "/v1/completions", {"prompt": [1, 2, 10**9]}, 400),
    ("negative token id", "/v1/completions", {"prompt": [-1]}, 400),
    ("token id as float", "/v1/completions", {"prompt": [1.5]}, 400),
    ("empty token list", "/v1/completions", {"prompt": []}, 400),
    ("prompt longer than a slot", "/v1/completions", {"prompt": "word " * 3000}, 400),
    ("ids longer than a slot", "/v1/completions", {"prompt": [100] * (CTX // SLOTS + 1)}, 400),
    ("bad response_format", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "yaml"}}, 400),
    ("json_schema without schema", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema"}}, 400),
    ("unsupported schema", "/v1/chat/completions",
     {"messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "frobnicate"}}}}, 400),
    ("detokenize bad id", "/detokenize", {"tokens": [10**9]}, 400),
    ("tokenize wrong type", "/tokenize", {"content": 5}, 400),
    ("embeddings empty list", "/v1/embeddings", {"input": []}, 400),
    ("embeddings bad id", "/v1/embeddings", {"input": [10**9]}, 400),
    ("huge body", "/v1/completions", b'{"prompt": "' + b"a" * (9 * 1024 * 1024) + b'"}', 413),
]


@pytest.mark.parametrize("what,path,body,status", BAD_BODIES, ids=[b[0] for b in BAD_BODIES])
def test_bad_input_is_a_4xx_and_the_server_keeps_serving(http, what, path, body, status):
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = http.post(path, content=content, headers={"Content-Type": "application/json"})
    assert_error(r, status)
    assert http.get("/health").status_code == 200


def test_huge_body_without_content_length_is_refused(http):
    def chunks():
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"a" * (1024 * 1024)
        yield b'"}'

    assert_error(http.post("/v1/completions", content=chunks()), 413)


def test_unknown_route_and_wrong_method(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


def test_openai_client_sees_bad_request(client):
    with pytest.raises(openai.BadRequestError):
        chat(client, "hi", n=2)


# --- concurrency, cache, disconnects ---------------------------------------------------------------------


SYSTEM = "You are a careful assistant who answers briefly and precisely. " * 12  # several cache blocks


def greedy_tokens(client, prompt, system=None, max_tokens=32):
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    r = client.chat.completions.create(model="smol", messages=messages, max_tokens=max_tokens, temperature=0,
                                       logprobs=True)
    return [bytes(e.bytes) for e in r.choices[0].logprobs.content], r.usage


def test_concurrent_greedy_requests_equal_sequential_ones(client):
    """8 greedy requests at once (one per slot) give exactly the tokens they give one at a
    time, with short prompts and with a long shared system prompt (then reused from the
    cache by every request after the first)."""
    for system in (None, SYSTEM):
        def ask(prompt):
            return greedy_tokens(client, prompt, system)[0]

        sequential = [ask(p) for p in PROMPTS]
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            concurrent_ = list(pool.map(ask, PROMPTS))
            again = list(pool.map(ask, PROMPTS))
        assert concurrent_ == sequential
        assert again == sequential


def test_a_cached_prompt_gives_the_uncached_tokens(client):
    system = "You are a pirate who speaks only in riddles about the sea. " * 12  # no other test uses it
    first, u1 = greedy_tokens(client, "Where is the treasure?", system, max_tokens=40)
    second, u2 = greedy_tokens(client, "Where is the treasure?", system, max_tokens=40)
    third, u3 = greedy_tokens(client, "Where is the gold?", system, max_tokens=40)
    n = u1.prompt_tokens
    # the first time, at most the chat template's opening (other tests' prompts start with it)
    assert n > 2 * CACHE_BLOCK and u1.prompt_tokens_details.cached_tokens < 16
    # the server repacks the weights (Model.split_invariant): everything the cache shares with
    # the prompt is reused, up to its last token (see engine.Slot) ...
    assert u2.prompt_tokens_details.cached_tokens == n - 1
    assert 2 * CACHE_BLOCK < u3.prompt_tokens_details.cached_tokens < u3.prompt_tokens - 1
    # ... and the reply is the same token for token
    assert second == first


def test_requests_beyond_the_slots_wait_in_the_queue(client):
    prompts = [f"Tell me a fact about the number {i}." for i in range(SLOTS + 4)]
    with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: chat(client, p, max_tokens=8), prompts))
    assert all(r.usage.completion_tokens > 0 for r in results)


def test_client_disconnect_frees_the_slot(server, http):
    body = {"messages": [{"role": "user", "content": "Write a very long essay about rivers."}], "max_tokens": 900,
            "temperature": 0, "stream": True}
    before = _metric(http.get("/metrics").text, "requests_cancelled_total")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
        with c.stream("POST", "/v1/chat/completions", json=body) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = http.get("/metrics").text
        if _metric(text, "requests_processing") == 0 and _metric(text, "requests_cancelled_total") > before:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("the slot of a disconnected client was not freed")


# --- shutdown ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_cancels_streams_and_exits_0(default_model, sig):
    srv = ServerProcess(default_model, "-np", "2", "-c", "2048")
    try:
        body = {"messages": [{"role": "user", "content": "Write a very long essay about mountains."}], "max_tokens": 1000,
                "temperature": 0, "stream": True}
        events, started = [], threading.Event()

        def read():
            with httpx.stream("POST", srv.url + "/v1/chat/completions", json=body, timeout=120) as r:
                for line in r.iter_lines():
                    events.append(line)
                    if len(events) > 3:
                        started.set()
            started.set()

        reader = threading.Thread(target=read)
        reader.start()
        assert started.wait(120)
        t0 = time.monotonic()
        assert srv.signal(sig) == 0
        reader.join(30)
        assert not reader.is_alive() and time.monotonic() - t0 < 30
        assert "data: [DONE]" in events and any('"error"' in e for e in events)  # the stream ended, saying why
    finally:
        srv.stop()


def test_busy_port_is_a_one_line_error(default_model, server):
    import subprocess
    import sys

    port = server.url.rsplit(":", 1)[1]
    p = subprocess.run([sys.executable, "-m", "llamatool", "serve", "-m", str(default_model), "--port", port, "-c", "512"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and p.stderr.strip().startswith("error: cannot listen on 127.0.0.1:" + port)
    assert len(p.stderr.strip().splitlines()) == 1


def test_only_serve_imports_the_server_stack():
    """The HTTP stack and the grammar engine load only for `serve`: the CLI, the Python API
    and other commands never import them."""
    import subprocess
    import sys

    code = ("import sys, llamatool.cli, llamatool.model, llamatool.generate, llamatool.run\n"
            "print(sorted(m for m in ('starlette', 'uvicorn', 'llguidance', 'llamatool.server') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
    help_text = subprocess.run([sys.executable, "-m", "llamatool", "serve", "--help"], capture_output=True, text=True,
                               check=True).stdout
    for option in ("--host", "--port", "--ctx-size", "--parallel", "--threads", "--api-key", "--alias", "--metrics",
                   "--embeddings"):
        assert option in help_text


def test_embeddings_agree_with_llama_server(default_model, http, tmp_path):
    """Our /v1/embeddings against llama.cpp's own server (--embeddings --pooling mean) on the
    same texts: the same token counts, and vectors that agree to llama.cpp's version noise."""
    import importlib.util

    from .conftest import ROOT, llama_cpp_binary
    from .server_harness import LlamaServerProcess

    spec = importlib.util.spec_from_file_location("llamacpp_bin", ROOT / "scripts" / "llamacpp_bin.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    binary = llama_cpp_binary(module.find_binary, "llama-server")
    with LlamaServerProcess(binary, "-m", str(default_model), "-np", "1", "-c", "512", "-t", "1", "--embeddings", "--pooling", "mean") as server:
        url = server.url
        for text in ["The cat sat on the mat.", "Quarterly revenue grew by four percent.", "naïve café 日本語"]:
            theirs = httpx.post(url + "/v1/embeddings", json={"input": text}, timeout=60).json()
            ours = http.post("/v1/embeddings", json={"input": text}).json()
            assert ours["usage"]["prompt_tokens"] == theirs["usage"]["prompt_tokens"]
            a, b = (np.array(r["data"][0]["embedding"]) for r in (ours, theirs))
            assert a.shape == b.shape
            assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.999
