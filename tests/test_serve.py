"""gpt4all-serve end to end: the real server on a loopback port, driven by the openai client and raw HTTP."""
from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
openai = pytest.importorskip("openai")

from conftest import backend_built, require_backend  # noqa: E402

from gpt4all_loader import load  # noqa: E402
from gpt4all_loader.formats.writer import (  # noqa: E402
    TinyBert,
    TinyGPTJ,
    TinyLlama,
    write_bert,
    write_gptj,
    write_llama,
)

TEMPLATE = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")
GGUF, GGJT, GPTJ, BERT = "tiny.gguf", "tiny-ggjt3.bin", "gptj.bin", "tiny-bert.bin"
#: longer than the tiny BERT's 128 positions: embedded in several windows that overlap by 32 tokens
LONG_TEXT = " ".join(["once upon a time there lived a little cat, hello world 123."] * 40)
#: seconds any one server may take to start, and any one request
START_S, REQUEST_S = 60, 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``gpt4all-serve`` in a child process; stopped (bounded in time) by :meth:`stop`."""

    def __init__(self, paths: list[Path], *extra: str, log: Path) -> None:
        self.port = _free_port()
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gpt4all_loader.cli.serve", *map(str, paths), "--port", str(self.port),
             "--threads", "1", *extra], stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_S
        while True:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the server did not start: {self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def request(self, method: str, path: str, body: bytes | str | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict | str]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_S)
        try:
            data = json.dumps(body).encode() if isinstance(body, dict) else body
            conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
            r = conn.getresponse()
            raw = r.read().decode()
            try:
                return r.status, json.loads(raw)
            except ValueError:
                return r.status, raw
        finally:
            conn.close()

    def get(self, path: str, **kw) -> tuple[int, dict | str]:
        return self.request("GET", path, **kw)

    def post(self, path: str, body, **kw) -> tuple[int, dict | str]:
        return self.request("POST", path, body, **kw)

    def client(self, key: str = "none") -> "openai.OpenAI":
        return openai.OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key=key, timeout=REQUEST_S,
                             max_retries=0)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    require_backend("gguf-2026-10")
    require_backend("llama-2023-08")
    d = tmp_path_factory.mktemp("served")
    write_llama(d / GGUF, TinyLlama(seed=0), "gguf", version=3, chat_template=TEMPLATE)
    write_llama(d / GGJT, TinyLlama(seed=1), "ggjt", version=3)
    write_gptj(d / GPTJ, TinyGPTJ(seed=0))
    (d / "notes.gguf").write_text("not a model\n")
    (d / "README.txt").write_text("skipped silently: not a model name\n")
    return d


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    s = Server([folder], "--max-loaded", "2", log=tmp_path_factory.mktemp("log") / "serve.log")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def greedy(folder):
    """Model.generate(..., temperature=0) in this process: what the server must answer."""
    def run(name: str, prompt: str, n: int) -> str:
        with load(folder / name, n_threads=1) as m:
            return m.generate(prompt, max_tokens=n, temperature=0)
    return run


def _ids(server: Server) -> set[str]:
    return {m.id for m in server.client().models.list()}


def test_listing_and_skipped_files_logged_once(server):
    ids = _ids(server)
    assert {GGUF, GGJT} <= ids
    assert "notes.gguf" not in ids and "README.txt" not in ids
    gptj_built = backend_built("ggml-gpt4all-2023-05") or backend_built("ggml-gpt4all-2023-08")
    assert (GPTJ in ids) == gptj_built
    log = server.log()
    assert log.count("notes.gguf") == 1 and "not served" in log and "not a model" in log
    assert "README.txt" not in log
    status, body = server.get("/health")
    assert status == 200 and body["status"] == "ok"


def test_completion_plain_streamed_and_greedy(server, greedy, folder):
    c = server.client()
    plain = c.completions.create(model=GGUF, prompt="hello world", max_tokens=8, temperature=0)
    text = plain.choices[0].text
    assert text == greedy(GGUF, "hello world", 8)
    assert plain.usage.completion_tokens == 8 and plain.choices[0].finish_reason == "length"
    with load(folder / GGUF, n_threads=1) as m:
        assert plain.usage.prompt_tokens == len(m.tokenize("hello world"))
    pieces = list(c.completions.create(model=GGUF, prompt="hello world", max_tokens=8, temperature=0, stream=True,
                                       stream_options={"include_usage": True}))
    assert "".join(p.choices[0].text for p in pieces if p.choices) == text
    assert pieces[-1].usage.total_tokens == plain.usage.total_tokens
    # a legacy ggjt file answers the same way, greedy equal to the in-process engine
    old = c.completions.create(model=GGJT, prompt="hello", max_tokens=6, temperature=0)
    assert old.choices[0].text == greedy(GGJT, "hello", 6)


def _sse_texts(raw: bytes) -> tuple[str, list[str]]:
    """The text of a streamed completion and its events' kinds: it must end with one [DONE]."""
    events = [e.removeprefix("data: ") for e in raw.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1, events[-3:]
    chunks = [json.loads(e) for e in events[:-1]]
    return "".join(c["choices"][0]["text"] for c in chunks if c["choices"]), [c["object"] for c in chunks]


def test_streams_over_one_kept_alive_connection_and_over_http_1_0(server, greedy):
    """A stream's pieces are written by the model's worker to the connection (HTTP/1.1 chunks, the framing
    checked by http.client), which then serves the next request; an HTTP/1.0 client, whose reply is not
    chunked, is streamed by the server itself."""
    expect = greedy(GGUF, "once upon", 6)
    body = {"model": GGUF, "prompt": "once upon", "max_tokens": 6, "temperature": 0, "stream": True}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=REQUEST_S)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            assert r.status == 200 and r.getheader("transfer-encoding") == "chunked"
            assert _sse_texts(r.read())[0] == expect
        conn.request("POST", "/v1/completions", body=json.dumps(dict(body, stream=False)),
                     headers={"Content-Type": "application/json"})
        assert json.loads(conn.getresponse().read())["choices"][0]["text"] == expect
    finally:
        conn.close()
    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_S) as s:
        s.sendall(b"POST /v1/completions HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b"
                  % (len(data), data))
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert _sse_texts(rest)[0] == expect


def test_a_client_that_goes_away_mid_stream_frees_the_model(server):
    c = server.client()
    c.completions.create(model=GGUF, prompt="hi", max_tokens=1, temperature=0)
    pid = next(m["pid"] for m in _loaded(server) if m["id"] == GGUF and not m["embeddings"])
    data = json.dumps({"model": GGUF, "prompt": "once upon", "max_tokens": 4000, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_S) as s:
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%b" % (len(data), data))
        got = b""
        while b'"text"' not in got:
            got += s.recv(4096)
        os.kill(pid, signal.SIGSTOP)  # the worker stands still while the client leaves
        try:
            assert any(m["id"] == GGUF and m["busy"] for m in _loaded(server)), "the stream ended too soon"
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # a reset, not a goodbye
        finally:
            s.close()
            time.sleep(0.2)
            os.kill(pid, signal.SIGCONT)
    deadline = time.monotonic() + 30
    while any(m["id"] == GGUF and m["busy"] for m in _loaded(server)):
        assert time.monotonic() < deadline, "the stream of a client that went away never ended"
        time.sleep(0.05)
    assert c.completions.create(model=GGUF, prompt="hi", max_tokens=2, temperature=0).choices[0].text
    assert any(m["pid"] == pid for m in _loaded(server))  # the same worker: nothing crashed


def test_stop_and_seeded_sampling(server):
    c = server.client()
    full = c.completions.create(model=GGUF, prompt="hello", max_tokens=8, temperature=0).choices[0].text
    cut = full[2:4]
    stopped = c.completions.create(model=GGUF, prompt="hello", max_tokens=8, temperature=0, stop=[cut])
    assert stopped.choices[0].text == full[:full.find(cut)]
    assert stopped.choices[0].finish_reason == "stop"
    a, b = (c.completions.create(model=GGUF, prompt="hello", max_tokens=6, temperature=0.9, top_p=0.9,
                                 seed=7).choices[0].text for _ in range(2))
    assert a == b


def test_chat_with_the_files_template(server, folder):
    c = server.client()
    messages = [{"role": "user", "content": "hi there"}]
    r = c.chat.completions.create(model=GGUF, messages=messages, max_tokens=6, temperature=0)
    with load(folder / GGUF, n_threads=1) as m:
        assert r.choices[0].message.content == m.chat(messages, max_tokens=6, temperature=0)
    assert r.choices[0].message.role == "assistant" and r.usage.completion_tokens >= 1
    chunks = list(c.chat.completions.create(model=GGUF, messages=messages, max_tokens=6, temperature=0, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == r.choices[0].message.content
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert r.system_fingerprint.endswith("; chat_template=file") and chunks[0].system_fingerprint == \
        r.system_fingerprint
    # no template in the file, not in GPT4All's list, none given: ChatML, and both say so
    listed = {m["id"]: m for m in server.get("/v1/models")[1]["data"]}
    assert listed[GGUF]["chat_template"] == "file" and listed[GGJT]["chat_template"] == "default:chatml"
    old = c.chat.completions.create(model=GGJT, messages=messages, max_tokens=4, temperature=0)
    assert old.system_fingerprint == "llama-2023-08/cpu; chat_template=default:chatml"
    with load(folder / GGJT, n_threads=1) as m:
        assert old.choices[0].message.content == m.chat(messages, max_tokens=4, temperature=0)


def test_chat_templates_given_per_model_and_published(tmp_path):
    """--chat-template for all models and MODEL=... for one; a file of GPT4All's list gets its template."""
    from test_chat_templates import ORCA_3B, table_with

    require_backend("llama-2023-08")
    require_backend("gguf-2026-10")
    bare = write_llama(tmp_path / "bare.gguf", TinyLlama(seed=0), "gguf", version=3)
    ggjt = write_llama(tmp_path / GGJT, TinyLlama(seed=1), "ggjt", version=3)
    orca = write_llama(tmp_path / ORCA_3B, TinyLlama(seed=2), "ggjt", version=3)
    table = table_with(tmp_path, ORCA_3B, orca)
    jinja = tmp_path / "mine.jinja"
    jinja.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}[assistant] ")
    files = [bare, ggjt, orca]
    expect = {"bare.gguf": (f"user:{jinja}", dict(chat_template=str(jinja))),
              GGJT: ("user:vicuna", dict(chat_template="vicuna")),
              ORCA_3B: ("gpt4all:Mini Orca (Small)", dict(published_table=table))}
    if backend_built("ggml-gpt4all-2023-05") or backend_built("ggml-gpt4all-2023-08"):
        files.append(write_gptj(tmp_path / GPTJ, TinyGPTJ(seed=0)))
        expect[GPTJ] = (f"user:{jinja}", dict(chat_template=str(jinja)))
    s = Server(files, "--chat-template", str(jinja), "--chat-template", f"{GGJT}=vicuna",
               "--published-table", table, log=tmp_path / "serve.log")
    try:
        listed = {m["id"]: m["chat_template"] for m in s.get("/v1/models")[1]["data"]}
        assert listed == {k: v[0] for k, v in expect.items()}
        messages = [{"role": "user", "content": "hi there"}]
        for name, (source, kw) in expect.items():
            r = s.client().chat.completions.create(model=name, messages=messages, max_tokens=5, temperature=0)
            assert r.system_fingerprint.endswith(f"; chat_template={source}")
            with load(tmp_path / name, n_threads=1, **kw) as m:
                assert m.chat_template_source == source
                assert r.choices[0].message.content == m.chat(messages, max_tokens=5, temperature=0)
    finally:
        s.stop()
    # a template that is neither built in nor a file, or a model not served: usage errors
    for bad in (["--chat-template", "chatmI"], ["--chat-template", "nope.gguf=chatml"]):
        cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.serve", str(bare), "--port",
                             str(_free_port()), *bad], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 2 and ("neither a built-in" in cp.stderr or "no model nope.gguf" in cp.stderr)


def test_embeddings(server, folder):
    r = server.client().embeddings.create(model=GGUF, input=["hello", "world"])
    assert [d.index for d in r.data] == [0, 1]
    with load(folder / GGUF, n_threads=1, embeddings=True) as m:
        assert r.data[0].embedding == pytest.approx(m.embed("hello"), rel=1e-6, abs=1e-6)
    status, raw = server.post("/v1/embeddings", {"model": GGUF, "input": "hello", "encoding_format": "float"})
    assert status == 200 and raw["data"][0]["embedding"] == pytest.approx(r.data[0].embedding, rel=1e-6)
    assert len(r.data[0].embedding) == TinyLlama().n_embd and r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0


def test_error_statuses(server):
    def err(status: int, path: str, body, **kw) -> dict:
        got, obj = server.post(path, body, **kw)
        assert got == status, obj
        assert set(obj["error"]) >= {"message", "type", "param", "code"}
        return obj["error"]

    assert err(404, "/v1/completions", {"model": "nope.gguf", "prompt": "x"})["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        server.client().completions.create(model="nope.gguf", prompt="x")
    err(400, "/v1/completions", b"{not json")
    err(400, "/v1/completions", b"[1, 2]")
    err(400, "/v1/completions", {"prompt": "x"})
    for bad in ({"temperature": -1}, {"temperature": "hot"}, {"top_p": 1.5}, {"max_tokens": 0},
                {"max_tokens": 10**9}, {"stop": ["a"] * 5}, {"n": 9}, {"stream": "yes"}, {"prompt": 5}):
        assert err(400, "/v1/completions", {"model": GGUF, "prompt": "x", **bad})["param"] in {*bad, None}
    assert err(400, "/v1/completions", {"model": GGUF, "prompt": [1, 10**6]})["param"] == "prompt"
    assert server.post("/v1/completions", {"model": GGUF, "prompt": [1, 300, 301], "max_tokens": 2})[0] == 200
    err(400, "/v1/chat/completions", {"model": GGUF, "messages": "hi"})
    err(400, "/v1/embeddings", {"model": GGUF, "input": 3})
    err(413, "/v1/completions", {"model": GGUF, "prompt": "x" * (1 << 21)})
    long = err(400, "/v1/completions", {"model": GGUF, "prompt": "hello " * 400, "max_tokens": 1})
    assert long["code"] == "context_length_exceeded"
    numbers = [int(w) for w in long["message"].replace(";", " ").split() if w.isdigit()]
    assert len(numbers) >= 2 and numbers[0] > numbers[1], long["message"]
    assert server.get("/v1/nothing")[0] == 404


def test_api_key(folder, tmp_path):
    s = Server([folder / GGUF], "--api-key", "s3cret", log=tmp_path / "serve.log")
    try:
        assert s.get("/v1/models")[0] == 401
        status, body = s.get("/v1/models", headers={"Authorization": "Bearer wrong"})
        assert status == 401 and body["error"]["type"] == "authentication_error"
        with pytest.raises(openai.AuthenticationError):
            s.client("wrong").models.list()
        assert [m.id for m in s.client("s3cret").models.list()] == [GGUF]
        assert s.get("/health")[0] == 200
    finally:
        s.stop()
    lines = [ln for ln in s.log().splitlines() if " GET /v1/models " in ln]
    assert len(lines) == 4 and sum(" 401 " in ln for ln in lines) == 3  # one line per request


def test_eight_concurrent_requests_over_two_models(server, greedy):
    expect = {GGUF: greedy(GGUF, "once upon", 5), GGJT: greedy(GGJT, "once upon", 5)}
    c = server.client()

    def one(i: int) -> tuple[str, str]:
        name = (GGUF, GGJT)[i % 2]
        if i % 4 < 2:
            done = c.completions.create(model=name, prompt="once upon", max_tokens=5, temperature=0)
            return name, done.choices[0].text
        pieces = c.completions.create(model=name, prompt="once upon", max_tokens=5, temperature=0, stream=True)
        return name, "".join(p.choices[0].text for p in pieces)

    with ThreadPoolExecutor(8) as ex:
        results = list(ex.map(one, range(8)))
    assert len(results) == 8
    for name, text in results:
        assert text == expect[name]


def _loaded(server: Server) -> list[dict]:
    return server.get("/health")[1]["loaded"]


def test_worker_killed_during_a_request(server):
    c = server.client()
    c.completions.create(model=GGUF, prompt="hi", max_tokens=1, temperature=0)
    pid = next(m["pid"] for m in _loaded(server) if m["id"] == GGUF and not m["embeddings"])
    os.kill(pid, signal.SIGSTOP)  # the worker cannot answer: the request below is surely in flight
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=server.post(
        "/v1/completions", {"model": GGUF, "prompt": "hello", "max_tokens": 4, "temperature": 0})))
    t.start()
    deadline = time.monotonic() + 30
    while not any(m["id"] == GGUF and m["busy"] for m in _loaded(server)):
        assert time.monotonic() < deadline, "the request never reached the worker"
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    t.join(REQUEST_S)
    status, body = result["r"]
    assert 500 <= status < 600 and "SIGKILL" in body["error"]["message"] and GGUF in body["error"]["message"]
    assert server.get("/health")[0] == 200
    again = c.completions.create(model=GGUF, prompt="hello", max_tokens=4, temperature=0)
    assert again.choices[0].text
    assert all(m["pid"] != pid for m in _loaded(server))
    # a worker that dies between requests costs no request: it is loaded again
    idle = next(m["pid"] for m in _loaded(server) if m["id"] == GGUF and not m["embeddings"])
    os.kill(idle, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(m["pid"] == idle for m in _loaded(server)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert c.completions.create(model=GGUF, prompt="hello", max_tokens=4, temperature=0).choices[0].text == \
        again.choices[0].text
    assert "loading it again" in server.log()


@pytest.mark.skipif(not hasattr(os, "SCHED_BATCH") or not os.path.isdir("/proc/self/task"),
                    reason="scheduling policies per thread: Linux")
def test_the_servers_threads_stand_aside_for_its_workers_decodes(server):
    """The server's own threads (event loop, readers) are SCHED_BATCH, so their wake-ups never stop an engine
    thread mid-graph; its workers decode under the policy the server was started with."""
    if os.sched_getscheduler(0) != os.SCHED_OTHER:
        pytest.skip("the tests run under a policy someone chose, which the server keeps")
    server.client().completions.create(model=GGUF, prompt="hi", max_tokens=2, temperature=0)
    pid = next(m["pid"] for m in _loaded(server) if m["id"] == GGUF and not m["embeddings"])

    def policies(p: int) -> set[int]:
        return {os.sched_getscheduler(int(t)) for t in os.listdir(f"/proc/{p}/task")}

    assert policies(server.proc.pid) == {os.SCHED_BATCH}
    assert policies(pid) == {os.SCHED_OTHER}


def test_least_recently_used_unloads_first(server):
    c = server.client()
    for name in (GGUF, GGJT):
        c.completions.create(model=name, prompt="a", max_tokens=1, temperature=0)
    c.embeddings.create(model=GGUF, input="a")  # a third worker: --max-loaded 2 unloads the LRU (GGUF)
    loaded = {(m["id"], m["embeddings"]) for m in _loaded(server)}
    assert loaded == {(GGJT, False), (GGUF, True)}


def test_memory_budget(folder, tmp_path):
    from gpt4all_loader.cli.serve import discover

    entries, _ = discover([str(folder / GGUF), str(folder / GGJT)])
    a, b = entries[GGUF].memory_mib, entries[GGJT].memory_mib
    budget = max(a, b) + min(a, b) / 2  # either fits, both do not
    s = Server([folder / GGUF, folder / GGJT], "--max-loaded", "8", "--memory-budget", f"{budget:.3f}",
               log=tmp_path / "serve.log")
    try:
        c = s.client()
        for name in (GGUF, GGJT, GGUF):
            c.completions.create(model=name, prompt="a", max_tokens=1, temperature=0)
            assert [m["id"] for m in _loaded(s)] == [name]
    finally:
        s.stop()


def test_gptj_file_served_when_its_era_is_built(server, greedy):
    if GPTJ not in _ids(server):
        pytest.skip("no ggml-gpt4all backend is built: python build_backends.py --only ggml-gpt4all-2023-05")
    r = server.client().completions.create(model=GPTJ, prompt="hello", max_tokens=4, temperature=0)
    assert r.choices[0].text == greedy(GPTJ, "hello", 4)


def test_core_import_stays_small_and_nothing_to_serve_is_an_error(tmp_path):
    code = ("import sys, gpt4all_loader, gpt4all_loader.model, gpt4all_loader.worker, gpt4all_loader.cli.serve; "
            "print(sorted(m for m in ('starlette', 'uvicorn', 'anyio', 'prometheus_client') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
    (tmp_path / "notes.gguf").write_text("not a model\n")
    cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.serve", str(tmp_path), "--port", str(_free_port())],
                        capture_output=True, text=True, timeout=60)
    assert cp.returncode == 1 and "no model to serve" in cp.stderr and "not a model" in cp.stderr


# -- a sentence-embedding file (GPT4All's BERT): embeddings only -----------------------------------------
@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    require_backend("ggml-gpt4all-2023-08")
    d = tmp_path_factory.mktemp("bert")
    path = write_bert(d / BERT, TinyBert(seed=5), "f32")
    s = Server([path], log=d / "serve.log")
    yield s, path
    s.stop()


def _cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / (sum(x * x for x in a) * sum(y * y for y in b)) ** 0.5


def test_bert_embeddings_equal_embed_in_process(bert):
    """Float and base64 (the openai client's default) answers are Model.embed()'s vectors, L2-normalised;
    a long text is embedded window by window (gpt4all's chunking with overlap), not refused."""
    server, path = bert
    texts = ["Hello world", "Once upon a time there lived a little cat.", LONG_TEXT]
    b64 = server.client().embeddings.create(model=BERT, input=texts)
    flt = server.client().embeddings.create(model=BERT, input=texts, encoding_format="float")
    with load(path, n_threads=1, embeddings=True) as m:
        assert len(m.tokenize(LONG_TEXT)) > 3 * m.info.n_ctx_train
        ours = [m.embed(t) for t in texts]
        assert b64.usage.prompt_tokens == sum(len(m.tokenize(t)) for t in texts)
    for r in (b64, flt):
        assert [d.index for d in r.data] == [0, 1, 2]
        for d, e in zip(r.data, ours):
            assert len(d.embedding) == len(e) == TinyBert().n_embd
            assert _cosine(d.embedding, e) >= 0.9999
            assert sum(x * x for x in d.embedding) ** 0.5 == pytest.approx(1.0, abs=1e-5)
    assert _cosine(flt.data[0].embedding, flt.data[2].embedding) < 0.9999


def test_bert_embeds_the_same_in_a_worker(bert):
    """Embed4All's path: the isolated (worker process) model gives the in-process vectors."""
    _, path = bert
    with load(path, n_threads=1, embeddings=True) as m, \
            load(path, n_threads=1, embeddings=True, isolated=True) as w:
        for t in ("Hello world", LONG_TEXT):
            assert _cosine(w.embed(t), m.embed(t)) >= 0.9999


def test_bert_generation_is_a_clear_400(bert):
    server, _ = bert
    for path, body in (("/v1/completions", {"model": BERT, "prompt": "hi"}),
                       ("/v1/chat/completions", {"model": BERT, "messages": [{"role": "user", "content": "hi"}]})):
        status, obj = server.post(path, body)
        assert status == 400 and "only embeds" in obj["error"]["message"], obj
    with pytest.raises(openai.BadRequestError, match="only embeds"):
        server.client().chat.completions.create(model=BERT, messages=[{"role": "user", "content": "hi"}])
    assert "Traceback" not in server.log()
