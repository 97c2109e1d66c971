"""Structured output, tool calls and log-probabilities through gpt4all-serve, with real clients: the official
``openai`` client and LangChain's ``ChatOpenAI(...).with_structured_output`` (its ``json_schema`` and
``function_calling`` methods), on a GGUF file, a 2023 ggjt file and a GPT-J file.

The models have random weights: their free text is noise, so JSON that parses and fits, and tool calls whose
arguments fit, come from the constraint alone.  Schemas bound their strings (maxLength) for that reason.
"""
from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import require_backend
from test_serve import REQUEST_S, Server

from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, write_gptj, write_llama

openai = pytest.importorskip("openai")
pydantic = pytest.importorskip("pydantic")

FILES = {
    "tiny.gguf": ("gguf-2026-10", lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True, n_ctx=2048), "gguf",
                                                        version=3, ftype="f32")),
    "tiny-ggjt.bin": ("llama-2023-08", lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "ggjt",
                                                             version=3, ftype="f32")),
    "tiny-gptj.bin": ("ggml-gpt4all-2023-05", lambda p: write_gptj(p, TinyGPTJ(seed=0, n_embd=32, n_ctx=2048),
                                                                   "f32")),
}
PERSON = {"type": "object", "additionalProperties": False, "required": ["name", "age"],
          "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer", "minimum": 0,
                                                                            "maximum": 120}}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "maxLength": 10},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
ASK = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]
MAX = 300


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("structured")
    for name, (backend, write) in FILES.items():
        require_backend(backend)
        write(folder / name)
    s = Server([folder], "--parallel", "2", log=folder / "server.log")
    yield s
    s.stop()


@pytest.mark.parametrize("model", sorted(FILES))
def test_response_format_json_schema(server, model):
    c = server.client()
    r = c.chat.completions.create(model=model, messages=ASK, max_tokens=MAX, temperature=0.8, seed=1,
                                  response_format={"type": "json_schema",
                                                   "json_schema": {"name": "person", "schema": PERSON, "strict": True}})
    assert r.choices[0].finish_reason == "stop"
    jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    # streamed, with the usage at the end
    chunks = list(c.chat.completions.create(
        model=model, messages=ASK, max_tokens=MAX, stream=True, stream_options={"include_usage": True},
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    jsonschema.validate(json.loads(text), PERSON)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("model", sorted(FILES))
def test_tool_calls(server, model):
    c = server.client()
    for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
        r = c.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice=choice,
                                      max_tokens=MAX, temperature=0.7, seed=2)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and ch.message.content is None
        call = ch.message.tool_calls[0]
        assert call.type == "function" and call.function.name == "get_weather" and call.id
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    # streamed: the call arrives as delta.tool_calls
    chunks = list(c.chat.completions.create(model=model, messages=ASK, tools=[WEATHER], tool_choice="required",
                                            max_tokens=MAX, stream=True))
    calls = [tc for ch in chunks if ch.choices for tc in (ch.choices[0].delta.tool_calls or [])]
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER["function"]["parameters"])
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the conversation goes on with the tool's answer
    follow = ASK + [{"role": "assistant", "content": None, "tool_calls": [calls[0].model_dump(exclude={"index"})]},
                    {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny"}]
    r = c.chat.completions.create(model=model, messages=follow, tools=[WEATHER], max_tokens=20)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.parametrize("model", sorted(FILES))
def test_logprobs_sorted_and_streamed(server, model):
    c = server.client()
    r = c.chat.completions.create(model=model, messages=ASK, max_tokens=6, logprobs=True, top_logprobs=4,
                                  temperature=0)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for t in content:
        tops = [x.logprob for x in t.top_logprobs]
        assert len(tops) == 4 and tops == sorted(tops, reverse=True) and t.logprob == tops[0]  # greedy: the best
        assert bytes(t.bytes).decode("utf-8", "replace") == t.token
    streamed = [lp for ch in c.chat.completions.create(model=model, messages=ASK, max_tokens=6, logprobs=True,
                                                       top_logprobs=2, stream=True, temperature=0)
                if ch.choices and ch.choices[0].logprobs for lp in ch.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    legacy = c.completions.create(model=model, prompt="hello", max_tokens=4, logprobs=3).choices[0].logprobs
    assert len(legacy.tokens) == len(legacy.token_logprobs) == len(legacy.top_logprobs) == 4


def test_n_choices_penalties_and_logit_bias(server):
    c = server.client()
    r = c.chat.completions.create(model="tiny.gguf", messages=ASK, max_tokens=8, n=3, temperature=1.0, seed=5,
                                  presence_penalty=0.5, frequency_penalty=0.5)
    assert [ch.index for ch in r.choices] == [0, 1, 2] and r.usage.completion_tokens >= 3
    texts = {ch.message.content for ch in r.choices}
    assert len(texts) > 1   # n different samples of one seed
    forced = c.completions.create(model="tiny.gguf", prompt="hello", max_tokens=3, logit_bias={"7": 100})
    assert forced.usage.completion_tokens == 3
    streamed = list(c.chat.completions.create(model="tiny.gguf", messages=ASK, max_tokens=4, n=2, stream=True))
    assert {ch.choices[0].index for ch in streamed if ch.choices} == {0, 1}
    # a GPT-J file has no batches: its n choices run one after another
    r = c.chat.completions.create(model="tiny-gptj.bin", messages=ASK, max_tokens=4, n=2)
    assert len(r.choices) == 2


def test_bad_requests_are_400_naming_the_problem(server):
    c = server.client()
    with pytest.raises(openai.BadRequestError, match="uniqueItems"):
        c.chat.completions.create(model="tiny.gguf", messages=ASK, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "array", "uniqueItems": True}}})
    with pytest.raises(openai.BadRequestError, match="nope"):
        c.chat.completions.create(model="tiny.gguf", messages=ASK, tools=[WEATHER],
                                  tool_choice={"type": "function", "function": {"name": "nope"}})
    with pytest.raises(openai.BadRequestError, match="top_logprobs"):
        c.chat.completions.create(model="tiny.gguf", messages=ASK, logprobs=True, top_logprobs=21)
    with pytest.raises(openai.BadRequestError, match="logit_bias"):
        c.chat.completions.create(model="tiny.gguf", messages=ASK, logit_bias={"x": 1})
    with pytest.raises(openai.BadRequestError, match="JSON schema"):
        c.chat.completions.create(model="tiny.gguf", messages=ASK, response_format={
            "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object",
                                                                          "description": "x" * 70000}}})


def test_langchain_with_structured_output(server):
    lc = pytest.importorskip("langchain_openai")

    class Person(pydantic.BaseModel):
        name: str = pydantic.Field(max_length=8)
        age: int = pydantic.Field(ge=0, le=120)

    for model in ("tiny.gguf", "tiny-gptj.bin"):
        llm = lc.ChatOpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="none", model=model,
                            max_tokens=MAX, temperature=0.5, timeout=REQUEST_S, max_retries=0)
        for method in ("json_schema", "function_calling"):
            got = llm.with_structured_output(Person, method=method).invoke("Invent a person.")
            assert isinstance(got, Person) and len(got.name) <= 8 and 0 <= got.age <= 120
