"""API misuse gives library errors, never a crash (issue 12, parts 3 and 4).

Every native step that would crash the process if the library regressed runs in a child process
with a time-out, and the test asserts it ended without a signal.  The children write JSON results
on their last stdout line.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from conftest import require_backend

from gpt4all_loader.engines.manifest import load_manifest

#: (backend, how its tiny test model is written)
ERAS = [
    ("llama-2023-04", "ggjt:1"),
    ("llama-2023-05", "ggjt:2"),
    ("llama-2023-08", "ggjt:3"),
    ("gguf-2023-11", "gguf:3"),
    ("gguf-2024-09", "gguf:3"),
    ("gguf-2026-10", "gguf:3"),
    ("ggml-gpt4all-2023-05", "gptj"),
    ("ggml-gpt4all-2023-08", "mpt"),
]
#: the eras whose ggml keeps its contexts in a fixed table
TABLE_ERAS = [(b, f) for b, f in ERAS if load_manifest()[b].ggml_contexts is not None]

_PRELUDE = """
import json, os, sys, threading
from gpt4all_loader import load
from gpt4all_loader.errors import BackendError, ChatTemplateError, ModelClosedError
from gpt4all_loader.formats.writer import TinyGPTJ, TinyLlama, TinyMPT, write_gptj, write_llama, write_mpt

def tiny(kind, path):
    if kind == "gptj":
        return write_gptj(path, TinyGPTJ(seed=0))
    if kind == "mpt":
        return write_mpt(path, TinyMPT(seed=0))
    fmt, _, version = kind.partition(":")
    return write_llama(path, TinyLlama(seed=0), fmt, version=int(version), ftype="f32")

def done(result):
    sys.stdout.flush()
    print(json.dumps(result))
"""


def run_child(body: str, *args: str, timeout: float = 120) -> dict:
    """Run ``body`` (after the prelude) in a fresh interpreter; its JSON result, asserting no signal."""
    code = _PRELUDE + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode >= 0, f"the child died of signal {-proc.returncode}:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["_stderr"] = proc.stderr
    return result


# -- close() during a stream ----------------------------------------------------------------------
@pytest.mark.parametrize("backend,kind", ERAS, ids=[b for b, _ in ERAS])
def test_close_during_a_stream_raises_model_closed(backend, kind, tmp_path):
    require_backend(backend)
    r = run_child("""
        path, backend, kind = sys.argv[1:4]
        tiny(kind, path)
        out = {}
        m = load(path, backend=backend, n_ctx=64, n_threads=1)
        try:
            for i, piece in enumerate(m.generate("Hello", stream=True, max_tokens=16)):
                if i == 1:
                    m.close()
            out["loop"] = "no error"
        except ModelClosedError as e:
            out["loop"] = "ModelClosedError: " + str(e)
        out["closed"] = m.closed
        m = load(path, backend=backend, n_ctx=64, n_threads=1)
        try:
            m.generate("Hello", max_tokens=16, callback=lambda s: m.close())
            out["callback"] = "no error"
        except ModelClosedError as e:
            out["callback"] = "ModelClosedError: " + str(e)
        # a stream closed between steps and then abandoned frees the model when it is dropped
        m = load(path, backend=backend, n_ctx=64, n_threads=1)
        it = m.generate("Hello", stream=True, max_tokens=16)
        next(it)
        m.close()
        del it
        out["freed"] = m._handle is None
        done(out)
    """, str(tmp_path / "tiny.bin"), backend, kind)
    assert r["loop"].startswith("ModelClosedError") and "was closed" in r["loop"], r
    assert r["callback"].startswith("ModelClosedError"), r
    assert r["closed"] and r["freed"], r


# -- a per-era cap on open models -----------------------------------------------------------------
@pytest.mark.parametrize("backend,kind", TABLE_ERAS, ids=[b for b, _ in TABLE_ERAS])
def test_open_models_are_capped_per_era(backend, kind, tmp_path):
    require_backend(backend)
    spec = load_manifest()[backend]
    r = run_child("""
        path, backend, kind = sys.argv[1:4]
        tiny(kind, path)
        models, out = [], {}
        try:
            for _ in range(80):
                models.append(load(path, backend=backend, n_ctx=16, n_threads=1))
        except BackendError as e:
            out["refused"] = str(e)
        out["opened"] = len(models)
        # a full table still evaluates, also from several threads at once (they wait for a slot)
        results = {}
        def gen(i):
            results[i] = models[i].generate([1, 2, 3], max_tokens=4)
        threads = [threading.Thread(target=gen, args=(i,)) for i in range(6)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        out["generated"] = len(results)
        models.pop().close()
        models.append(load(path, backend=backend, n_ctx=16, n_threads=1))
        out["after_close"] = models[-1].generate([1, 2, 3], max_tokens=2) is not None
        done(out)
    """, str(tmp_path / "tiny.bin"), backend, kind)
    cap = spec.ggml_contexts.max_open_models
    assert r["opened"] == cap
    assert f"at most {cap} models of llama.cpp {spec.era}" in r["refused"] and "close one first" in r["refused"]
    assert r["generated"] == 6 and r["after_close"]


def test_cap_is_derived_from_the_context_table():
    spec = load_manifest()["llama-2023-08"]
    assert spec.ggml_contexts.max_open_models == 31        # 31 x 2 + one evaluation's graph = 63 <= 64
    assert load_manifest()["gguf-2026-10"].ggml_contexts is None


# -- concurrent loads and the stderr capture --------------------------------------------------------
def test_concurrent_loads_leave_stderr_alone(tmp_path):
    require_backend("llama-2023-08")
    r = run_child("""
        path = sys.argv[1]
        tiny("ggjt:3", path)
        before = os.fstat(2)
        errors = []
        def worker():
            try:
                for _ in range(5):
                    load(path, backend="llama-2023-08", n_ctx=16, n_threads=1).close()
            except Exception as e:
                errors.append(repr(e))
        threads = [threading.Thread(target=worker) for _ in range(4)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        after = os.fstat(2)
        os.write(2, b"stderr-still-here\\n")
        done({"same": (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino),
              "nlink": after.st_nlink, "errors": errors})
    """, str(tmp_path / "tiny.bin"))
    assert r["errors"] == [] and r["same"], r
    assert "stderr-still-here" in r["_stderr"]


# -- parameters are checked before native code ----------------------------------------------------
_PARAMS = """
    path, backend, kind = sys.argv[1:4]
    tiny(kind, path)
    out = {}
    def attempt(name, fn):
        try:
            fn()
            out[name] = "accepted"
        except ValueError as e:
            out[name] = "ValueError: " + str(e)
        except Exception as e:
            out[name] = type(e).__name__ + ": " + str(e)
    for name, kw in [("n_ctx=2**31-1", dict(n_ctx=2**31 - 1)), ("n_ctx=2**31", dict(n_ctx=2**31)),
                     ("n_ctx=0", dict(n_ctx=0)), ("n_threads=5000", dict(n_threads=5000)),
                     ("n_threads=0", dict(n_threads=0)), ("n_ctx=1.5", dict(n_ctx=1.5))]:
        attempt(name, lambda: load(path, backend=backend, **kw))
    m = load(path, backend=backend, n_ctx=32, n_threads=1)
    for name, kw in [("max_tokens=-1", dict(max_tokens=-1)), ("temperature=nan", dict(temperature=float("nan"))),
                     ("temperature=-1", dict(temperature=-1.0)), ("top_p=2", dict(top_p=2.0)),
                     ("min_p=inf", dict(min_p=float("inf"))), ("repeat_penalty=0", dict(repeat_penalty=0.0)),
                     ("top_k=2**40", dict(top_k=2**40)), ("seed=1.5", dict(seed=1.5)),
                     ("stop=['']", dict(stop=[""])), ("callback=1", dict(callback=1))]:
        attempt(name, lambda: m.generate("hi", stream=True, **kw))
    attempt("prompt ids 2**40", lambda: m.generate([1, 2**40], stream=True))
    attempt("evaluate 2**40", lambda: m.evaluate([2**40]))
    attempt("tokenize 64 MiB + 1", lambda: m.tokenize(b"a" * ((64 << 20) + 1)))
    # what the checks let through still works, and big windows are clamped to the context
    out["ok"] = m.generate("hi", max_tokens=3, repeat_last_n=10**9, seed=2**64 - 1, stop="zz") is not None
    done(out)
"""


@pytest.mark.parametrize("backend,kind", [e for e in ERAS if e[0] in ("llama-2023-05", "gguf-2023-11")],
                         ids=["llama-2023-05", "gguf-2023-11"])
def test_parameters_are_checked(backend, kind, tmp_path):
    require_backend(backend)
    r = run_child(_PARAMS, str(tmp_path / "tiny.bin"), backend, kind)
    assert r.pop("ok")
    r.pop("_stderr")
    for name, got in r.items():
        assert got.startswith("ValueError: "), f"{name}: {got}"
    assert "n_ctx must be between 1 and" in r["n_ctx=2**31"]
    assert "n_threads must be between 1 and" in r["n_threads=5000"]
    assert "at most 64 MiB" in r["tokenize 64 MiB + 1"]


# -- chat templates -------------------------------------------------------------------------------
CHAT_CASES = {
    "nested loops": ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                     "loop iterations"),
    "string repetition": ("{{ 'x' * 4000000000 }}", "repetition"),
    "list repetition": ("{{ (range(100000)|list) * 100000 }}", "repetition"),
    "format filter width": ("{{ '%999999999d'|format(1) }}", "format field width"),
    "percent width": ("{{ '%999999999d' % 1 }}", "format field width"),
    "star width": ("{{ '%*d' % (999999999, 1) }}", "format field width"),
    "str.format width": ("{{ '{:999999999}'.format(1) }}", "format spec"),
    "doubling by ~": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
                      "{% endfor %}{{ ns.s|length }}", "characters or items"),
    "doubling by +": ("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", "characters or items"),
    "squaring": ("{% set ns = namespace(n=10) %}{% for i in range(64) %}{% set ns.n = ns.n * ns.n %}"
                 "{% endfor %}{{ ns.n }}", "bits"),
    "power": ("{{ 10 ** 100000000 }}", "bits"),
    "str.center": ("{{ 'x'.center(1000000000) }}", "str.center"),
    "str.replace": ("{% set s = 'x' * 1000000 %}{{ s.replace('', s) }}", "str.replace"),
    "list of big strings": ("{% set s = 'x' * 4000000 %}{{ ([s] * 1000)|length }}", "characters or items"),
    "join separator": ("{{ (range(100000)|list)|join('x' * 4000000) }}", "a join of 100000 items"),
    "center filter": ("{{ 'x'|center(1000000000) }}", "the center filter"),
    "slice filter": ("{{ [1]|slice(1000000000)|list }}", "the slice filter"),
    "replace filter": ("{% set s = 'x' * 1000000 %}{{ s|replace('', s) }}", "the replace filter"),
    "output size": ("{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}", "an output of more than"),
    "recursion": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "RecursionError"),
    "overflow": ("{{ 1e308 * 10 ** 400 }}", "OverflowError"),
    "zero division": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "syntax": ("{% for %}", "TemplateSyntaxError"),
    "raise_exception": ("{{ raise_exception('no system role') }}", "refused the conversation: no system role"),
    "wall time": ("{% for i in range(100000) %}{% set x = 'a' * 4000000 %}{% endfor %}", "longer than 0.2 s"),
}


@pytest.fixture(scope="module")
def chat_results():
    """Every template case rendered once, in one child (a regression could take all its memory)."""
    r = run_child("""
        from gpt4all_loader import chat
        cases = json.loads(sys.argv[1])
        out = {}
        for name, template in cases.items():
            # each case meets the limit it is about, however busy the machine (the time-out bounds the rest)
            chat.MAX_SECONDS = 0.2 if name == "wall time" else 600
            try:
                out[name] = "rendered: " + chat.render(template, [{"role": "user", "content": "hi"}])[:80]
            except ChatTemplateError as e:
                out[name] = "ChatTemplateError: " + str(e)
            except BaseException as e:
                out[name] = "escaped " + type(e).__name__ + ": " + str(e)[:200]
        done(out)
    """, json.dumps({k: v[0] for k, v in CHAT_CASES.items()}), timeout=300)
    return r


@pytest.mark.parametrize("case", list(CHAT_CASES))
def test_chat_template_limits(chat_results, case):
    got = chat_results[case]
    assert got.startswith("ChatTemplateError: "), got
    assert CHAT_CASES[case][1] in got, got


def test_chat_templates_that_keep_to_the_limits_render():
    from gpt4all_loader.chat import render

    text = render("{% for m in messages recursive %}<{{ loop.index }}:{{ m.role ~ '|' }}>{% if m.children %}"
                  "{{ loop(m.children) }}{% endif %}{% endfor %}{{ '%5d' % 3 }}{{ '{:>3}'.format('a') }}"
                  "{{ '%.2f'|format(1.5) }}{{ range(100000)|list|length }}{{ 10000000|abs }}"
                  "{{ 'a b'|replace(' ', '--')|center(7) }}{{ ['x', 'y']|join(', ') }}",
                  [{"role": "user", "children": [{"role": "x", "children": []}]}])
    assert text == "<1:user|><1:x|>    3  a1.5010000010000000  a--b x, y"


def test_chat_template_error_is_an_unsupported_model_error():
    from gpt4all_loader.errors import ChatTemplateError, UnsupportedModelError

    assert issubclass(ChatTemplateError, UnsupportedModelError) and issubclass(ChatTemplateError, ValueError)
