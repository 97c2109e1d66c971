"""gpt4all-serve in operation: /metrics, readiness and liveness, limits against abusive clients, graceful
shutdown on SIGTERM, and the Kubernetes manifest; each against the real server in a child process."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("openai")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from conftest import require_backend  # noqa: E402
from test_serve import GGUF, REQUEST_S, TEMPLATE, Server  # noqa: E402

from gpt4all_loader.formats.writer import TinyLlama, write_llama  # noqa: E402

KEY = "s3cret"
AUTH = {"Authorization": f"Bearer {KEY}"}
ROOT = Path(__file__).resolve().parent.parent
#: the limits of the server most tests share: small, so that the tests reach them quickly
MAX_BODY, BODY_TIMEOUT, HEADER_TIMEOUT = 65536, 2, 2


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    require_backend("gguf-2026-10")
    d = tmp_path_factory.mktemp("ops")
    return write_llama(d / GGUF, TinyLlama(seed=0), "gguf", version=3, chat_template=TEMPLATE)


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    s = Server([model_path], "--api-key", KEY, "--parallel", "2", "--max-body-bytes", str(MAX_BODY), "--body-timeout",
               str(BODY_TIMEOUT), "--header-timeout", str(HEADER_TIMEOUT), log=tmp_path_factory.mktemp("log") / "s.log")
    yield s
    s.stop()


def scrape(server: Server) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted labels): value} of one /metrics scrape."""
    status, text = server.get("/metrics")
    assert status == 200 and isinstance(text, str)
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in prometheus_parser.text_string_to_metric_families(text) for s in fam.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def complete(server: Server, prompt: str = "hello", n: int = 8, **kw) -> dict:
    status, body = server.post("/v1/completions", {"model": GGUF, "prompt": prompt, "max_tokens": n,
                                                   "temperature": 0, **kw}, headers=AUTH)
    assert status == 200, body
    return body


def worker_pid(server: Server) -> int:
    return next(m["pid"] for m in server.get("/health")[1]["loaded"] if m["id"] == GGUF and not m["embeddings"])


def wait_for(predicate, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- metrics, readiness, liveness ------------------------------------------------------------------

def test_metrics_count_requests_tokens_and_loads(server):
    before = scrape(server)  # no model loaded yet: every per-model series is there, at zero
    assert value(before, "gpt4all_model_loaded", model=GGUF) == 0
    assert value(before, "gpt4all_model_loads_total", model=GGUF) == 0
    assert value(before, "gpt4all_slots", model=GGUF) == 2   # --parallel 2: a GGUF engine batches
    assert value(before, "gpt4all_model_info", model=GGUF, mode="batch") == 1
    usages = [complete(server)["usage"], complete(server)["usage"]]  # the second reuses the first's prefix
    status, raw = server.post("/v1/completions", {"model": GGUF, "prompt": "once upon", "max_tokens": 6,
                                                  "stream": True, "stream_options": {"include_usage": True}},
                              headers=AUTH)
    assert status == 200 and raw.rstrip().endswith("data: [DONE]")
    usages.append(json.loads(raw.split("data: ")[-2])["usage"])
    assert server.get("/v1/nothing/here", headers=AUTH)[0] == 404
    after = scrape(server)
    assert value(after, "gpt4all_requests_total", route="/v1/completions", model=GGUF, status="200") == 3
    assert value(after, "gpt4all_requests_total", route="other", model="", status="404") == 1
    assert value(after, "gpt4all_prompt_tokens_total", model=GGUF) == sum(u["prompt_tokens"] for u in usages)
    assert value(after, "gpt4all_completion_tokens_total", model=GGUF) == sum(u["completion_tokens"] for u in usages)
    cached = value(after, "gpt4all_prompt_tokens_cached_total", model=GGUF)
    assert 0 < cached < usages[1]["prompt_tokens"] + usages[2]["prompt_tokens"]
    assert value(after, "gpt4all_time_to_first_token_seconds_count", model=GGUF) == 3
    assert value(after, "gpt4all_generation_tokens_per_second_count", model=GGUF) == 3
    assert value(after, "gpt4all_request_duration_seconds_count", route="/v1/completions", model=GGUF) == 3
    assert value(after, "gpt4all_request_duration_seconds_bucket", route="/v1/completions", model=GGUF,
                 le="+Inf") == 3
    assert value(after, "gpt4all_model_loaded", model=GGUF) == 1
    assert value(after, "gpt4all_model_loads_total", model=GGUF) == 1
    assert value(after, "gpt4all_active_slots", model=GGUF) == 0
    assert value(after, "gpt4all_queue_depth", model=GGUF) == 0
    for name in ("gpt4all_model_unloads_total", "gpt4all_model_load_failures_total", "gpt4all_worker_crashes_total"):
        assert value(after, name, model=GGUF) == 0
    assert not any(name.endswith("_created") for name, _ in after)


def test_probes_and_metrics_need_no_key(server):
    assert server.get("/v1/models")[0] == 401
    status, health = server.get("/health")
    assert status == 200 and health["status"] == "ok" and health["models"] == 1
    assert set(health) >= {"status", "models", "loaded", "model_states"}
    assert health["model_states"][0].keys() == {"id", "mode", "slots", "busy_slots", "waiting", "loaded"}
    assert server.get("/livez") == (200, {"status": "alive"})
    assert server.get("/metrics")[0] == 200


def test_busy_slots_and_queue_depth_read_at_scrape_time(server):
    complete(server, n=1)
    pid = worker_pid(server)
    os.kill(pid, signal.SIGSTOP)  # the worker cannot answer: two requests run (--parallel 2), the next ones wait
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(complete(server, n=2))) for _ in range(4)]
    try:
        for t in threads:
            t.start()
        wait_for(lambda: value(scrape(server), "gpt4all_queue_depth", model=GGUF) == 2, "two waiting requests")
        samples = scrape(server)
        assert value(samples, "gpt4all_active_slots", model=GGUF) == 2
        state = server.get("/health")[1]["model_states"][0]
        assert (state["busy_slots"], state["slots"], state["waiting"], state["loaded"]) == (2, 2, 2, True)
    finally:
        os.kill(pid, signal.SIGCONT)
        for t in threads:
            t.join(REQUEST_S)
    assert len(results) == 4
    samples = scrape(server)
    assert value(samples, "gpt4all_active_slots", model=GGUF) == 0 and \
        value(samples, "gpt4all_queue_depth", model=GGUF) == 0


def test_worker_crash_is_counted_and_the_model_loads_again(server):
    complete(server, n=1)
    before = scrape(server)
    pid = worker_pid(server)
    os.kill(pid, signal.SIGSTOP)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(r=server.post(
        "/v1/completions", {"model": GGUF, "prompt": "hello", "max_tokens": 4}, headers=AUTH)))
    t.start()
    wait_for(lambda: value(scrape(server), "gpt4all_active_slots", model=GGUF) == 1, "the request in flight")
    os.kill(pid, signal.SIGKILL)
    t.join(REQUEST_S)
    status, body = result["r"]
    assert 500 <= status < 600 and "SIGKILL" in body["error"]["message"]
    complete(server, n=2)
    after = scrape(server)
    for name, grew in (("gpt4all_worker_crashes_total", 1), ("gpt4all_model_loads_total", 1)):
        assert value(after, name, model=GGUF) == value(before, name, model=GGUF) + grew
    assert value(after, "gpt4all_requests_total", route="/v1/completions", model=GGUF, status=str(status)) >= 1


# -- limits against abusive clients ------------------------------------------------------------------

def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=REQUEST_S)


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a Content-Length body: (status, headers, body)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        assert data, f"the connection closed before a response: {buf!r}"
        buf += data
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    while len(body) < int(headers.get("content-length", 0)):
        data = sock.recv(65536)
        assert data
        body += data
    return int(lines[0].split()[1]), headers, body


def rest_until_closed(sock: socket.socket, timeout: float = 30) -> bytes:
    """What the server still sends before it closes the connection (a reset ends it too); TimeoutError when
    it keeps it open ``timeout`` seconds longer."""
    sock.settimeout(timeout)
    out = b""
    try:
        while data := sock.recv(65536):
            out += data
    except ConnectionResetError:
        pass
    return out


def closed_by_server(sock: socket.socket, timeout: float = 30) -> bool:
    """True when the server closes the connection within ``timeout`` seconds (whatever else it sends)."""
    try:
        rest_until_closed(sock, timeout)
        return True
    except TimeoutError:
        return False


def openai_error(body: bytes) -> dict:
    err = json.loads(body)["error"]
    assert set(err) >= {"message", "type", "param", "code"}
    return err


def test_body_over_the_limit_is_413(server):
    """The declared length is refused unread; a client that never sends that body is disconnected after
    --header-timeout (one that does send it, as http.client does, gets the answer: test_serve.py)."""
    with connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        status, headers, body = read_response(sock)
        assert status == 413 and openai_error(body)["code"] == "request_too_large"
        assert closed_by_server(sock)


@pytest.mark.parametrize("auth", [True, False], ids=["read-to-the-limit", "refused-before-reading"])
def test_endless_chunked_body_is_cut_off(server, auth):
    """A chunked body that never ends: read up to the limit (413), or not at all (401), then the connection
    closes; the sender sees its connection end instead of being read for ever."""
    sent, ended = [0], threading.Event()
    with connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n" +
                     (b"Authorization: Bearer " + KEY.encode() + b"\r\n" if auth else b"") +
                     b"Transfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)

        def pour() -> None:
            try:
                while sent[0] < (1 << 30):  # a bound, so that a server that reads for ever fails the test
                    sock.sendall(chunk)
                    sent[0] += len(chunk)
            except OSError:
                pass
            ended.set()

        t = threading.Thread(target=pour, daemon=True)
        t.start()
        status, headers, body = read_response(sock)
        assert (status, openai_error(body)["code"]) == ((413, "request_too_large") if auth else
                                                       (401, "invalid_api_key"))
        assert headers["connection"] == "close"
        assert ended.wait(REQUEST_S), "the server kept reading the endless body"
    assert sent[0] < (1 << 30)


def test_slow_body_is_408(server):
    with connect(server) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + KEY.encode() +
                     b"\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\": ")
        status, headers, body = read_response(sock)  # the server answers after --body-timeout seconds
        assert status == 408 and headers["connection"] == "close"
        err = openai_error(body)
        assert err["code"] == "request_timeout" and f"within {BODY_TIMEOUT} s" in err["message"]
        assert closed_by_server(sock)
    assert server.get("/health")[0] == 200


def test_idle_and_dribbling_connections_are_closed(server):
    idle = [connect(server) for _ in range(5)]
    try:
        assert all(closed_by_server(s, REQUEST_S) for s in idle)
    finally:
        for s in idle:
            s.close()
    with connect(server) as sock:  # headers sent a byte at a time: each byte restarts no timer
        closed = False
        deadline = time.monotonic() + REQUEST_S
        head = b"GET /health HTTP/1.1\r\nHost: t\r\n" + b"X-Slow: " + b"a" * 10000
        for i in range(len(head)):
            assert time.monotonic() < deadline, "the dribbling connection was never closed"
            try:
                sock.sendall(head[i:i + 1])
            except OSError:
                closed = True
                break
            sock.settimeout(0.2)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
        assert closed
    assert server.get("/health")[0] == 200


def test_flood_of_headers_is_400(server):
    """h11 buffers at most 16 KiB of an incomplete request head past what one read brought (asyncio reads
    up to 256 KiB at a time): a megabyte of headers gets a 400 and the connection closes."""
    with connect(server) as sock:
        try:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: t\r\n" +
                         b"".join(b"X-Flood-%d: %s\r\n" % (i, b"y" * 100) for i in range(10000)) + b"\r\n")
        except OSError:
            pass  # the server closed while the rest was still on its way
        status, headers, body = read_response(sock)
        body += rest_until_closed(sock)   # the 400's body is chunked and may come in a later segment; then closed
        assert status == 400 and headers["connection"] == "close" and b"Invalid HTTP request" in body


def test_connection_limit(model_path, tmp_path):
    s = Server([model_path], "--max-connections", "4", "--header-timeout", "600", log=tmp_path / "s.log")
    try:
        held = [connect(s) for _ in range(4)]
        try:
            wait_for(lambda: s.get("/health")[0] == 503, "the connection limit")
        finally:
            for sock in held:
                sock.close()
        wait_for(lambda: s.get("/health")[0] == 200, "room for a connection again")
    finally:
        s.stop()


# -- graceful shutdown -----------------------------------------------------------------------------

def test_sigterm_finishes_the_stream_in_flight_and_exits_0(model_path, tmp_path):
    s = Server([model_path], "--shutdown-timeout", str(REQUEST_S), log=tmp_path / "s.log")
    try:
        expect = complete(s, "once upon", 12)["choices"][0]["text"]
        pid = worker_pid(s)
        os.kill(pid, signal.SIGSTOP)  # the stream below cannot end before the server is told to stop
        stream: dict = {}
        t = threading.Thread(target=lambda: stream.update(r=s.post("/v1/completions", {
            "model": GGUF, "prompt": "once upon", "max_tokens": 12, "temperature": 0, "stream": True})))
        try:
            t.start()
            wait_for(lambda: s.get("/health")[1]["model_states"][0]["busy_slots"] == 1, "the stream in flight")
            s.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: s.get("/health")[0] == 503, "readiness to fail")
            status, health = s.get("/health")
            assert status == 503 and health["status"] == "shutting_down"
            status, refused = s.post("/v1/completions", {"model": GGUF, "prompt": "x"})
            assert status == 503 and refused["error"]["code"] == "shutting_down"
            assert s.get("/livez")[0] == 200
            assert s.proc.poll() is None  # still draining
        finally:
            os.kill(pid, signal.SIGCONT)
        t.join(REQUEST_S)
        status, raw = stream["r"]
        assert status == 200 and raw.rstrip().endswith("data: [DONE]")
        events = [json.loads(line[6:]) for line in raw.splitlines() if line.startswith("data: {")]
        assert "".join(e["choices"][0]["text"] for e in events) == expect
        assert s.proc.wait(REQUEST_S) == 0
        with pytest.raises(OSError):
            connect(s).close()
    finally:
        s.stop()
    assert "SIGTERM: shutting down" in s.log() and "Traceback" not in s.log()


@pytest.mark.parametrize("timeout,signals", [(1, 1), (600, 2)], ids=["shutdown-timeout", "second-signal"])
def test_shutdown_cuts_off_a_hung_request(model_path, tmp_path, timeout, signals):
    """A request still running when --shutdown-timeout passes, or at a second SIGTERM, (here its worker is
    stopped) ends at once, its worker killed, instead of holding the exit until the worker's own time-out
    (300 s)."""
    s = Server([model_path], "--shutdown-timeout", str(timeout), log=tmp_path / "s.log")
    try:
        complete(s, n=1)
        pid = worker_pid(s)
        os.kill(pid, signal.SIGSTOP)
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(r=s.post("/v1/completions", {
            "model": GGUF, "prompt": "hello", "max_tokens": 4, "stream": True})))
        t.start()
        wait_for(lambda: s.get("/health")[1]["model_states"][0]["busy_slots"] == 1, "the request in flight")
        s.proc.send_signal(signal.SIGTERM)
        if signals == 2:
            wait_for(lambda: s.get("/health")[0] == 503, "the shutdown to begin")
            s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(REQUEST_S) == 0
        t.join(REQUEST_S)
        if signals == 1:  # a stopping server may drop the connection instead of answering
            status, body = result["r"]
            assert status == 500 and "SIGKILL" in body["error"]["message"]
    finally:
        s.stop()
    assert ("cut off" if signals == 1 else "SIGTERM again: stopping now") in s.log()
    assert "Traceback" not in s.log()


def test_bad_limits_are_usage_errors(model_path):
    from test_serve import _free_port

    for flag in ("--max-body-bytes", "--body-timeout", "--header-timeout", "--max-connections",
                 "--shutdown-timeout"):
        cp = subprocess.run([sys.executable, "-m", "gpt4all_loader.cli.serve", str(model_path), "--port",
                             str(_free_port()), flag, "0"], capture_output=True, text=True, timeout=60)
        assert cp.returncode == 2 and f"{flag} must be positive" in cp.stderr


# -- the Kubernetes manifest -------------------------------------------------------------------------

def _probe(path: str) -> dict:
    return {"type": "object", "required": ["httpGet"], "properties": {"httpGet": {
        "type": "object", "required": ["path", "port"],
        "properties": {"path": {"const": path}, "port": {"const": "http"}}}}}


#: the parts of docs/kubernetes.yaml the server relies on
DEPLOYMENT_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "apps/v1"}, "kind": {"const": "Deployment"},
        "spec": {"type": "object", "required": ["selector", "template"], "properties": {"template": {
            "type": "object", "required": ["metadata", "spec"], "properties": {
                "metadata": {"type": "object", "required": ["labels", "annotations"], "properties": {
                    "annotations": {"type": "object", "required": ["prometheus.io/scrape", "prometheus.io/port",
                                                                   "prometheus.io/path"],
                                    "properties": {"prometheus.io/path": {"const": "/metrics"},
                                                   "prometheus.io/scrape": {"const": "true"}}}}},
                "spec": {"type": "object", "required": ["containers", "terminationGracePeriodSeconds"],
                         "properties": {"containers": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                             "type": "object",
                             "required": ["name", "image", "command", "args", "ports", "readinessProbe",
                                          "livenessProbe", "resources", "volumeMounts"],
                             "properties": {
                                 "command": {"const": ["gpt4all-serve"]},
                                 "args": {"type": "array", "items": {"type": "string"}},
                                 "ports": {"type": "array", "contains": {
                                     "type": "object", "required": ["name", "containerPort"],
                                     "properties": {"name": {"const": "http"}}}},
                                 "readinessProbe": _probe("/health"),
                                 "livenessProbe": _probe("/livez")}}}}}}}}}},
}
SERVICE_SCHEMA = {
    "type": "object", "required": ["apiVersion", "kind", "spec"],
    "properties": {"apiVersion": {"const": "v1"}, "kind": {"const": "Service"},
                   "spec": {"type": "object", "required": ["selector", "ports"], "properties": {"ports": {
                       "type": "array", "minItems": 1,
                       "items": {"type": "object", "required": ["port", "targetPort"],
                                 "properties": {"targetPort": {"const": "http"}}}}}}},
}


@pytest.fixture(scope="module")
def manifest():
    yaml = pytest.importorskip("yaml")
    jsonschema = pytest.importorskip("jsonschema")
    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "docs" / "kubernetes.yaml").read_text())}
    assert set(docs) == {"Deployment", "Service"}
    jsonschema.validate(docs["Deployment"], DEPLOYMENT_SCHEMA)
    jsonschema.validate(docs["Service"], SERVICE_SCHEMA)
    return docs


def test_kubernetes_manifest_matches_the_server(manifest):
    from gpt4all_loader.cli.serve import ROUTES, build_parser

    deployment, service = manifest["Deployment"], manifest["Service"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    args = build_parser().parse_args(container["args"])  # every flag is one the server knows
    port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    assert args.port == port and args.host == "0.0.0.0"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
    for path in ("/health", "/livez", "/metrics"):
        assert path in ROUTES
    assert pod["spec"]["terminationGracePeriodSeconds"] > args.shutdown_timeout + 5  # + the preStop sleep
    assert args.threads * args.max_loaded <= int(container["resources"]["requests"]["cpu"])
    labels = pod["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    mount = container["volumeMounts"][0]
    assert args.paths == [mount["mountPath"]] and mount["readOnly"] is True


def test_kubernetes_container_args_start_a_server_whose_probes_answer(manifest, model_path, tmp_path):
    """The container's arguments, with this test's model folder, port and loopback address."""
    pod = manifest["Deployment"]["spec"]["template"]
    container = pod["spec"]["containers"][0]
    mount = container["volumeMounts"][0]["mountPath"]
    args = [str(model_path.parent) if a == mount else a for a in container["args"]
            if not a.startswith(("--host", "--port"))]
    s = Server([], *args, "--host", "127.0.0.1", log=tmp_path / "s.log")
    try:
        for probe in ("readinessProbe", "livenessProbe"):
            assert s.get(container[probe]["httpGet"]["path"])[0] == 200
        status, text = s.get(pod["metadata"]["annotations"]["prometheus.io/path"])
        assert status == 200 and "gpt4all_model_loaded" in text
    finally:
        s.stop()
