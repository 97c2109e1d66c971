"""Structured output, tool calls and log-probabilities through the Model API, on every kind of engine.

The models are random-weight tiny ones: their free text is noise, so a reply that parses and fits its
schema can only come from the constraint (the token mask applied in the C sampler).  Their schemas are
bounded (maxLength, maximum) because a random model stops a string only where the schema makes it.
"""
from __future__ import annotations

import json

import jsonschema
import pytest
from conftest import require_backend
from test_batching import in_threads

import gpt4all_loader as g
from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, write_gptj, write_llama

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["name", "age", "tags"],
          "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"},
                         "tags": {"type": "array", "maxItems": 2, "items": {"enum": ["a", "bb", "ccc"]}}}}
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "the weather in a city",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"type": "string", "maxLength": 10},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}},
         {"type": "function", "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}}}]
ASK = [{"role": "user", "content": "What is the weather in Paris for 3 days?"}]

#: a GGUF file (2026 engine), a ggjt file (2023-08 engine) and a GPT-J file (our own 2023 code)
FILES = {
    "gguf": ("gguf-2026-10", lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "gguf", version=3,
                                                   ftype="f32")),
    "ggjt": ("llama-2023-08", lambda p: write_llama(p, TinyLlama(seed=0, space_piece=True), "ggjt", version=3,
                                                    ftype="f32")),
    "gptj": ("ggml-gpt4all-2023-05", lambda p: write_gptj(p, TinyGPTJ(seed=0, n_embd=32, n_ctx=2048), "f32")),
}


@pytest.fixture(scope="module", params=sorted(FILES))
def model_file(request, tmp_path_factory):
    backend, write = FILES[request.param]
    require_backend(backend)
    p = tmp_path_factory.mktemp("structured") / f"tiny.{request.param}"
    write(p)
    return p, backend


def test_json_schema_output_fits(model_file):
    path, backend = model_file
    with g.load(path, n_ctx=2048) as m:
        assert m.info.backend == backend
        for seed in range(3):
            out = m.generate("Give me JSON:", max_tokens=400, json_schema=SCHEMA, temperature=0.8, seed=seed)
            assert m.last_generation.finish_reason == "stop"
            jsonschema.validate(json.loads(out), SCHEMA)
        # greedy with a mask stays deterministic
        a = m.generate("Give me JSON:", max_tokens=400, json_schema=SCHEMA)
        assert a == m.generate("Give me JSON:", max_tokens=400, json_schema=SCHEMA)


@pytest.mark.parametrize("choice", ["required", "auto", {"type": "function", "function": {"name": "get_weather"}}])
def test_tool_calls_fit_their_parameters(model_file, choice):
    path, _ = model_file
    with g.load(path, n_ctx=2048) as m:
        reply = m.chat(ASK, tools=TOOLS, tool_choice=choice, max_tokens=400, temperature=0.7, seed=1)
        st = m.last_generation
        if st.finish_reason == "tool_calls":
            assert reply.tool_calls and st.tool_calls == reply.tool_calls
            for call in reply.tool_calls:
                assert call["type"] == "function" and call["id"]
                tool = next(t["function"] for t in TOOLS if t["function"]["name"] == call["function"]["name"])
                jsonschema.validate(json.loads(call["function"]["arguments"]), tool["parameters"])
            if choice != "auto":
                assert reply.content is None
        else:   # "auto" may answer in text (a random model's text may run to max_tokens)
            assert choice == "auto" and st.finish_reason in ("stop", "length") and not reply.tool_calls
        if isinstance(choice, dict):
            assert reply.tool_calls[0]["function"]["name"] == "get_weather"


def test_response_format_and_logprobs_in_chat(model_file):
    path, _ = model_file
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA, "strict": True}}
    with g.load(path, n_ctx=2048) as m:
        pieces = list(m.chat(ASK, response_format=fmt, max_tokens=400, stream=True, logprobs=True, top_logprobs=3))
        jsonschema.validate(json.loads("".join(pieces)), SCHEMA)
        lps = [lp for p in pieces for lp in p.logprobs]
        assert len(lps) == m.last_generation.completion_tokens == len(m.last_generation.logprobs)
        for lp in lps:
            assert lp.logprob <= 0 and len(lp.top) <= 3
            assert [t.logprob for t in lp.top] == sorted((t.logprob for t in lp.top), reverse=True)
        out = m.chat(ASK, response_format={"type": "json_object"}, max_tokens=200, presence_penalty=0.5)
        if m.last_generation.finish_reason == "stop":   # any object: a random model may not close it in time
            assert isinstance(json.loads(out), dict)
        else:
            assert out.lstrip().startswith("{")


def test_constraints_per_sequence_in_a_batch(tmp_path):
    require_backend("gguf-2026-10")
    p = tmp_path / "tiny.gguf"
    FILES["gguf"][1](p)
    with g.load(p, n_ctx=2048, parallel=3) as m:
        out: dict[int, str] = {}

        def run(i):
            if i == 2:   # a free-text neighbour in the same batch
                out[i] = m.generate("hello", max_tokens=30)
            else:
                out[i] = m.generate("Give me JSON:", max_tokens=400, json_schema=SCHEMA, temperature=0.8, seed=i)

        in_threads(run, 3)
        for i in (0, 1):
            jsonschema.validate(json.loads(out[i]), SCHEMA)


def test_bad_constraints_are_clear_errors(tmp_path):
    require_backend("gguf-2026-10")
    p = tmp_path / "tiny.gguf"
    FILES["gguf"][1](p)
    with g.load(p, n_ctx=512) as m:
        with pytest.raises(g.ConstraintError, match="uniqueItems"):
            m.generate("x", json_schema={"type": "array", "uniqueItems": True})
        with pytest.raises(ValueError, match="response_format.type"):
            m.chat(ASK, response_format={"type": "xml"})
        with pytest.raises(g.ToolSpecError):
            m.chat(ASK, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
        with pytest.raises(ValueError, match="not both"):
            m.generate("x", json_schema=SCHEMA, grammar='start: "a"')
        # a grammar that cannot end within max_tokens: "length", never a hang
        m.generate("x", grammar='start: /a{1000}/', max_tokens=20)
        assert m.last_generation.finish_reason == "length"
