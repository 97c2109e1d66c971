"""Tool calls (gpt4all_loader.tool_calls): validation, plans for every tool_choice in both formats, prompts,
constraints that hold on real vocabularies, and parsing of good, bad and truncated replies."""
from __future__ import annotations

import json

import pytest

import gpt4all_loader as g
from gpt4all_loader import constrain as C
from gpt4all_loader.chat import ChatTemplate
from gpt4all_loader.tool_calls import ToolPlan, ToolSpecError, plan, template_format

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8},
                                                    "unit": {"enum": ["C", "F"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "parameters": {
        "type": "object", "$defs": {"Num": {"type": "integer", "minimum": 0, "maximum": 99}},
        "properties": {"a": {"$ref": "#/$defs/Num"}, "b": {"$ref": "#/$defs/Num"}},
        "required": ["a", "b"], "additionalProperties": False}}}
NOARGS = {"type": "function", "function": {"name": "now"}}
TOOLS = [WEATHER, ADD, NOARGS]

#: a ChatML template that renders ``tools`` and speaks <tool_call>, as Qwen2.5/Hermes templates do
HERMES_TEMPLATE = """{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}{% else %}You are a helpful assistant.{% endif %}

# Tools

Function signatures are inside <tools></tools>:
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools>

To call a function, write its name and arguments inside <tool_call></tool_call> tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call><|im_end|>
{% elif messages[0]['role'] == 'system' %}<|im_start|>system
{{ messages[0]['content'] }}<|im_end|>
{% endif %}
{% for m in messages %}{% if m.role == 'system' %}{% elif m.role == 'tool' %}<|im_start|>user
<tool_response>
{{ m.content }}
</tool_response><|im_end|>
{% elif m.role == 'assistant' and m.tool_calls %}<|im_start|>assistant
{% for c in m.tool_calls %}<tool_call>
{"name": "{{ c.function.name }}", "arguments": {{ c.function.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% else %}<|im_start|>{{ m.role }}
{{ m.content }}<|im_end|>
{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""
CHATML = ChatTemplate("user:chatml", "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n"
                                     "{% endfor %}<|im_start|>assistant\n")
NO_SYSTEM = ChatTemplate("user:nosys", "{% for m in messages %}{% if m.role == 'system' %}"
                                       "{{ raise_exception('no system role') }}{% endif %}"
                                       "[{{ m.role }}] {{ m.content }}\n{% endfor %}")


# -- validation ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("tools,choice,parallel,match", [
    ([WEATHER], {"type": "function", "function": {"name": "nope"}}, None, "'nope', which is not among the tools"),
    ([WEATHER], "sometimes", None, "tool_choice must be"),
    ([WEATHER], {"type": "allowed_tools"}, None, "not supported"),
    ([], "required", None, "needs tools"),
    ([WEATHER], "auto", "yes", "parallel_tool_calls must be"),
    ("get_weather", None, None, "must be a list"),
    ([{"type": "retrieval"}], None, None, r"tools\[0\].type must be 'function'"),
    ([{"type": "function", "function": {"name": "a b"}}], None, None, "1-64 letters"),
    ([WEATHER, WEATHER], None, None, "given twice"),
    ([{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}], None, None,
     "of type 'object'"),
    ([{"type": "function", "function": {"name": "f", "parameters": [1]}}], None, None, "JSON schema object"),
    ([{"type": "function", "function": {"name": "f", "description": 3}}], None, None, "description"),
    ([{"type": "function", "function": {"name": "f", "strict": "yes"}}], None, None, "strict"),
    ([WEATHER] * 129, None, None, "at most 128"),
])
def test_bad_requests_raise_precise_errors(tools, choice, parallel, match):
    with pytest.raises(ToolSpecError, match=match):
        plan(tools, choice, parallel)
    assert issubclass(ToolSpecError, ValueError) and g.ToolSpecError is ToolSpecError


def test_template_format_detection():
    assert template_format(HERMES_TEMPLATE) == "hermes"
    assert template_format(CHATML.jinja) == "generic"
    # mentions <tool_call> but never renders the tools: generic
    assert template_format("{{ '<tool_call>' }}{% for m in messages %}{{ m.content }}{% endfor %}") == "generic"
    assert template_format("{{ raise_exception('x') }}<tool_call>") == "generic"


# -- plans for every tool_choice ----------------------------------------------------------------------
CHOICES = ["none", "auto", "required", {"type": "function", "function": {"name": "add"}}, None]


@pytest.mark.parametrize("choice", CHOICES)
@pytest.mark.parametrize("parallel", [False, True])
def test_generic_plans(choice, parallel):
    p = plan(TOOLS, choice, parallel, chat_template=CHATML.jinja)
    if choice == "none":
        assert p.format == "none" and not p.constrained and p.parse("hi") == ("hi", [])
        return
    assert p.format == "generic" and p.json_schema is not None and p.grammar is None
    text = json.dumps(p.json_schema)
    assert ('"tool_calls"' in text) == (parallel and choice != "none" and not isinstance(choice, dict))
    assert ('"response"' in text) == (choice in ("auto", None))
    assert "get_weather" in p.system_text and "add" in p.system_text
    if isinstance(choice, dict):
        assert '"const": "add"' in text and '"const": "get_weather"' not in text
    # the tool text goes into the system message, or a new one
    msgs = p.messages([{"role": "user", "content": "hi"}])
    assert msgs[0]["role"] == "system" and msgs[0]["content"] == p.system_text
    msgs = p.messages([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}])
    assert msgs[0]["content"].startswith("Be brief.\n\n") and len(msgs) == 2
    # a template without a system role gets it in the first user message
    prompt = p.render(NO_SYSTEM, [{"role": "user", "content": "hi"}])
    assert prompt.startswith("[user] You can call the following tools")


@pytest.mark.parametrize("choice", CHOICES)
def test_hermes_plans(choice):
    p = plan(TOOLS, choice, True, chat_template=HERMES_TEMPLATE)
    if choice == "none":
        assert p.format == "none"
        return
    assert p.format == "hermes" and p.grammar is not None and p.json_schema is None and p.system_text is None
    assert ("TEXT" in p.grammar) == (choice in ("auto", None))
    prompt = p.render(ChatTemplate("file", HERMES_TEMPLATE), [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "C"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "12 C"}])
    assert "<tools>" in prompt and "get_weather" in prompt and "<tool_response>\n12 C" in prompt
    # earlier arguments are printed as an object, not as a quoted string
    assert '"arguments": {"city": "Oslo", "unit": "C"}' in prompt


def test_generic_history_and_response_schema():
    schema = {"type": "object", "properties": {"answer": {"type": "integer"}}, "required": ["answer"]}
    p = plan([WEATHER], "auto", False, schema, chat_template=CHATML.jinja)
    msgs = p.messages([
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "12 C"}])
    assert json.loads(msgs[2]["content"]) == {"tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}}
    assert msgs[3]["role"] == "user" and json.loads(msgs[3]["content"])["tool_response"]["content"] == "12 C"
    assert p.parse('{"response": {"answer": 4}}') == ('{"answer": 4}', [])
    none = plan([WEATHER], "none", None, schema)
    assert none.format == "none" and none.json_schema == schema


# -- parsing ------------------------------------------------------------------------------------------
def _calls(calls):
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def test_generic_parse_good_bad_truncated():
    p = plan(TOOLS, "auto", True)
    content, calls = p.parse('{"tool_call": {"name": "add", "arguments": {"a": 1, "b": 2}}}')
    assert content is None and _calls(calls) == [("add", {"a": 1, "b": 2})]
    c = calls[0]
    assert c["type"] == "function" and c["id"].startswith("call_") and isinstance(c["function"]["arguments"], str)
    _, calls = p.parse(' {"tool_calls": [{"name": "now", "arguments": {}}, '
                       '{"name": "add", "arguments": {"a": 1, "b": 2}}]}\n')
    assert _calls(calls) == [("now", {}), ("add", {"a": 1, "b": 2})] and calls[0]["id"] != calls[1]["id"]
    assert p.parse('{"response": "Hello"}') == ("Hello", [])
    for bad in ('{"tool_call": {"name": "add", "arguments": {"a": 1', "plain words", "", "[1, 2]", "{}",
                '{"tool_call": {"name": "rm_rf", "arguments": {}}}', '{"tool_call": {"name": "add", "arguments": 3}}',
                '{"tool_calls": []}', '{"response": "x"} trailing', "\x00\xff{", '{"tool_call": null}',
                '{"tool_calls": [{"name": "now", "arguments": {}}, 7]}', "9" * 5000):
        content, calls = p.parse(bad)
        assert calls == [] and content == (bad or None)


def test_hermes_parse_good_bad_truncated():
    p = plan(TOOLS, "auto", True, chat_template=HERMES_TEMPLATE)
    text = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo", "unit": "C"}}\n'
            '</tool_call>\n<tool_call>\n{"name": "now", "arguments": "{}"}\n</tool_call>')
    content, calls = p.parse(text)
    assert content == "Let me check." and _calls(calls) == [("get_weather", {"city": "Oslo", "unit": "C"}),
                                                            ("now", {})]
    single = plan(TOOLS, "auto", False, chat_template=HERMES_TEMPLATE)
    assert len(single.parse(text)[1]) == 1
    assert p.parse("Just text.") == ("Just text.", [])
    truncated = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Os'
    assert p.parse(truncated) == (truncated, [])
    unclosed = '<tool_call>\n{"name": "now", "arguments": {}}\n'
    assert p.parse(unclosed) == (unclosed.strip(), [])
    for bad in ("<tool_call>", "<tool_call>\n{}\n</tool_call>", "</tool_call>", "<tool_call>[1]</tool_call>",
                '<tool_call>{"name": "x", "arguments": {}}</tool_call>', ""):
        content, calls = p.parse(bad)
        assert calls == [] and content == (bad.strip() or None)


# -- constraints on real vocabularies ----------------------------------------------------------------

def _fits(vocab: C.Vocabulary, grammar: C.Grammar, text: str) -> bool:
    matcher = grammar.matcher()
    for t in vocab.tokenize(text.encode()):
        if not C.allows(matcher.mask(), t):
            return False
        matcher.consume(t)
    return matcher.is_accepting()


@pytest.mark.parametrize("fmt", ["generic", "hermes"])
def test_constraints_accept_calls_that_fit_and_refuse_the_rest(smollm2_vocab, fmt):
    _, vocab = smollm2_vocab
    template = HERMES_TEMPLATE if fmt == "hermes" else CHATML.jinja

    def reply(calls, parallel):
        if fmt == "hermes":
            return "\n".join(f"<tool_call>\n{json.dumps(c)}\n</tool_call>" for c in calls)
        return json.dumps({"tool_calls": calls} if parallel else {"tool_call": calls[0]})

    ok = {"name": "add", "arguments": {"a": 1, "b": 2}}
    wrong = [{"name": "add", "arguments": {"a": 1, "b": 200}}, {"name": "add", "arguments": {"a": 1}},
             {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "K"}}, {"name": "rm", "arguments": {}}]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "add"}}):
        for parallel in (False, True):
            p = plan(TOOLS, choice, parallel, chat_template=template)
            grammar = p.compile(vocab)
            assert grammar is not None
            assert p.parallel == (parallel and isinstance(choice, str))
            assert _fits(vocab, grammar, reply([ok], p.parallel))
            assert _calls(p.parse(reply([ok], p.parallel))[1]) == [("add", {"a": 1, "b": 2})]
            for w in wrong:
                assert not _fits(vocab, grammar, reply([w], p.parallel))
            two = reply([ok, {"name": "now", "arguments": {}}], True)
            assert _fits(vocab, grammar, two) == p.parallel
    auto = plan(TOOLS, "auto", False, chat_template=template).compile(vocab)
    plain = "Sure, the answer is 4." if fmt == "hermes" else '{"response": "Sure, the answer is 4."}'
    assert _fits(vocab, auto, plain)
    required = plan(TOOLS, "required", False, chat_template=template).compile(vocab)
    assert not _fits(vocab, required, plain)


def test_unsupported_parameter_schema_raises_constraint_error(smollm2_vocab):
    bad = {"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"xs": {"type": "array", "uniqueItems": True}}}}}
    for template in (CHATML.jinja, HERMES_TEMPLATE):
        with pytest.raises(C.ConstraintError, match="uniqueItems"):
            plan([bad], "required", chat_template=template).compile(smollm2_vocab[1])


def test_tool_call_from_a_random_weight_model_fits_its_parameters(tiny_llama):
    """Greedy decoding under the plan's constraint on real logits: the parsed call validates."""
    jsonschema = pytest.importorskip("jsonschema")
    from tests.test_constrain import greedy

    with g.load(tiny_llama[("gguf", 3, "f32")], n_ctx=256, n_threads=1) as model:
        vocab = C.Vocabulary.from_model(model)
        for template in (CHATML.jinja, HERMES_TEMPLATE):
            p: ToolPlan = plan(TOOLS, "required", False, chat_template=template)
            grammar = p.compile(vocab)
            assert grammar is not None
            _, text = greedy(model, vocab, grammar, "Hello world", 240)
            content, calls = p.parse(text.decode())
            assert len(calls) == 1, text
            name, args = _calls(calls)[0]
            params = next(t["function"].get("parameters", {"type": "object"}) for t in TOOLS
                          if t["function"]["name"] == name)
            jsonschema.validate(args, params)
