"""Many users on one model: gpt4all-serve next to llama-server, 1 and 8 concurrent streaming chat clients.

    python bench/bench_serve.py [--rounds 3] [--clients 8] [--threads 2] [--max-tokens 48] [--hogs N]
                                [--quick] [--no-peer] [--no-busy] [--peer-native] [--baseline CHECKOUT]
                                [--baseline-cache DIR] [--json]

Both servers serve SmolLM2-135M-Instruct Q4_1 (``gpt4all_loader.testing.realfiles``) with ``--threads``
CPU threads: ours (``python -m gpt4all_loader.cli.serve FILE --threads N``, plus ``--parallel CLIENTS``
where its ``--help`` offers it) and llama-server of the same pinned llama-cpp-python sdist
(``bench/peer_server.py`` builds it once into the cache, with our build's CMake options) with
``-np CLIENTS -c CLIENTS x n_ctx``: every slot gets the context our server gives the file.  Both run at
the same time and take turns, the one not measured paused (SIGSTOP of its whole session: llama-server's
idle threads poll, which cost the other server a fifth of its speed here): each round times, server by
server (the order flips every round),

* one client: a streamed chat reply of ``--max-tokens`` tokens (temperature 0);
* ``--clients`` clients at once (threads, each its own ``openai`` client and its own fixed prompt);
* one client again with a busy-loop process on every core (``--hogs``; the idle and busy halves of a
  round swap places every round).

Every request is the official ``openai`` client's ``chat.completions.create(stream=True)`` with
``stream_options={"include_usage": True}`` and ``ignore_eos`` in the body (llama-server honours it; a
server that does not may stop at the end token, so tokens/s are computed from the tokens each reply
really has: ``usage.completion_tokens``, else its content chunks).  Figures: tokens/s of one client
(tokens / request time), aggregate tokens/s of the concurrent clients (all their tokens / the time from
the first request to the last token), time to first token (request sent to first content chunk: p50 and
p95 over every concurrent request of every round), and tokens/s with hogs / tokens/s idle.  The
ratios ours / peer are printed against the targets of "many users on one model".  For one client the
time between tokens (first to last content chunk / tokens - 1) is printed too: what the server adds per
token, apart from the request's start.

``--baseline CHECKOUT`` runs a third server, "baseline": ours from another checkout of this repository
(its ``loader/`` imported as ``gpt4all_loader``, same libraries and cache), measured in the same rounds, so
that a change is compared with what it replaces on the same machine at the same time.  For a change of
native code, ``--baseline-cache DIR`` gives the baseline a library cache of its own: build the checkout's
libraries there first (``GPT4ALL_LOADER_CACHE=DIR python CHECKOUT/build_backends.py --only gguf-2026-10
--variant cpu``).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator


#: one fixed prompt per client (the same for both servers), each asking for a long answer
TOPICS = ["a lighthouse keeper", "a river", "the first snow of the year", "an old clock", "a fox in a city",
          "a long train journey", "a garden at night", "a lost letter", "a mountain village", "a small boat",
          "a library", "a storm at sea", "a bakery at dawn", "a forgotten key", "a desert road", "a winter market"]
#: the issue's targets: (figure, comparison, bound)
TARGETS = {"tok/s 1 client": (">=", 0.9), "aggregate tok/s": (">=", 0.9), "p95 TTFT": ("<=", 1.5),
           "busy/idle": (">=", 0.4)}
START_TIMEOUT = 180.0


def prompt(i: int) -> str:
    return f"Write a long, detailed story about {TOPICS[i % len(TOPICS)]}. Describe every scene carefully."


# -- the servers ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A server process on a local port, with its log file."""

    name: str
    cmd: list[str]
    port: int
    model: str
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    #: variables added to this environment for the server (and its workers)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> None:
        with open(self.log, "wb") as out:
            # a session of its own: the whole server (our worker processes too) can be paused as one
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         env={**os.environ, **self.env})
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} at start: "
                                   f"{shlex.join(self.cmd)}\n{self.log.read_text(errors='replace')[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not answer /health within {START_TIMEOUT:.0f} s (log: {self.log})")

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP the server (and its workers) for the block: an idle server uses no CPU then (llama-server's
        idle threads poll, about 6 % of a core here, enough to slow the other server by a fifth)."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.killpg(self.proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def our_server(model: Path, threads: int, clients: int, logdir: Path) -> Server:
    base = [sys.executable, "-m", "gpt4all_loader.cli.serve"]
    help_text = subprocess.run([*base, "--help"], capture_output=True, text=True).stdout
    port = free_port()
    cmd = [*base, str(model), "--port", str(port), "--threads", str(threads)]
    if "--parallel" in help_text:
        cmd += ["--parallel", str(clients)]
    return Server("ours", cmd, port, model.name, logdir / "ours.log")


def baseline_server(checkout: Path, model: Path, threads: int, clients: int, logdir: Path,
                    cache: Path | None = None) -> Server:
    """Ours from another checkout: its ``loader/`` is imported as ``gpt4all_loader`` (PYTHONPATH), workers
    included; the libraries and the cache are this machine's, or those in ``cache``."""
    pkg = logdir / "baseline-path"
    pkg.mkdir(exist_ok=True)
    link = pkg / "gpt4all_loader"
    if not link.exists():
        link.symlink_to((checkout / "loader").resolve(), target_is_directory=True)
    s = our_server(model, threads, clients, logdir)
    s.name, s.log = "baseline", logdir / "baseline.log"
    s.env = {"PYTHONPATH": str(pkg)}
    if cache is not None:
        s.env["GPT4ALL_LOADER_CACHE"] = str(cache.resolve())
    return s


def peer_server(binary: Path, model: Path, threads: int, clients: int, n_ctx: int, logdir: Path) -> Server:
    port = free_port()
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads), "-np", str(clients),
           "-c", str(clients * n_ctx), "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    return Server("llama-server", cmd, port, model.name, logdir / "llama-server.log")


def per_slot_context(model: Path) -> int:
    """The context our server gives the file (load()'s default): every peer slot gets as much."""
    from gpt4all_loader import read_facts
    from gpt4all_loader.plan import default_n_ctx

    return default_n_ctx(read_facts(str(model)))


# -- the clients ---------------------------------------------------------------------------------------------
@dataclass
class Reply:
    start: float
    first: float | None = None
    last: float | None = None
    end: float = 0.0
    tokens: int = 0
    chunks: int = 0
    error: str | None = None

    @property
    def ttft(self) -> float:
        return (self.first if self.first is not None else self.end) - self.start


def stream_one(server: Server, i: int, max_tokens: int, barrier: threading.Barrier | None = None) -> Reply:
    """One streamed chat reply; times measured on this side of the connection."""
    import openai

    client = openai.OpenAI(base_url=server.base_url, api_key="none", max_retries=0, timeout=600)
    if barrier is not None:
        barrier.wait()
    r = Reply(start=time.perf_counter())
    usage = None
    try:
        stream = client.chat.completions.create(
            model=server.model, messages=[{"role": "user", "content": prompt(i)}], max_tokens=max_tokens,
            temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
        for ev in stream:
            if ev.usage is not None:
                usage = ev.usage
            if ev.choices and ev.choices[0].delta.content:
                r.last = time.perf_counter()
                if r.first is None:
                    r.first = r.last
                r.chunks += 1
        r.end = time.perf_counter()
    except Exception as e:  # noqa: BLE001 - a failed request is reported, not fatal
        r.end, r.error = time.perf_counter(), f"{type(e).__name__}: {e}"
    finally:
        client.close()
    r.tokens = usage.completion_tokens if usage is not None and usage.completion_tokens else r.chunks
    return r


def concurrent(server: Server, n: int, max_tokens: int) -> list[Reply]:
    barrier = threading.Barrier(n)
    out: list[Reply | None] = [None] * n

    def run(i: int) -> None:
        out[i] = stream_one(server, i, max_tokens, barrier)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [r for r in out if r is not None]


@contextlib.contextmanager
def hogs(n: int) -> Iterator[None]:
    from bench_busy import Hogs

    with Hogs(n):
        yield


# -- figures -------------------------------------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between the closest ranks (numpy's default)."""
    v = sorted(values)
    if not v:
        return float("nan")
    k = (len(v) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _range(v: list[float]) -> tuple[float, float] | None:
    return (min(v), max(v)) if len(v) > 1 else None


def single_tps(r: Reply) -> float:
    return r.tokens / (r.end - r.start) if r.end > r.start else 0.0


def between_tokens(r: Reply) -> float | None:
    """Seconds from one content chunk to the next, on average over one reply."""
    return (r.last - r.first) / (r.chunks - 1) if r.first is not None and r.last is not None and r.chunks > 1 else None


def aggregate_tps(rs: list[Reply]) -> float:
    span = max(r.end for r in rs) - min(r.start for r in rs)
    return sum(r.tokens for r in rs) / span if span > 0 else 0.0


@dataclass
class Figures:
    """Everything measured on one server over the rounds."""

    single: list[Reply] = field(default_factory=list)
    many: list[list[Reply]] = field(default_factory=list)
    busy: list[Reply] = field(default_factory=list)

    def errors(self) -> list[str]:
        return [r.error for r in [*self.single, *(r for g in self.many for r in g), *self.busy] if r.error]

    def summary(self) -> dict[str, Any]:
        ttft = [r.ttft for g in self.many for r in g]
        med = statistics.median
        out: dict[str, Any] = {
            "tps_1": med([single_tps(r) for r in self.single]) if self.single else None,
            "ttft_1": med([r.ttft for r in self.single]) if self.single else None,
            "itl_1": med(gaps) if (gaps := [g for r in self.single if (g := between_tokens(r)) is not None]) else None,
            "tps_many": med([aggregate_tps(g) for g in self.many]) if self.many else None,
            "ttft_p50": percentile(ttft, 0.5) if ttft else None,
            "ttft_p95": percentile(ttft, 0.95) if ttft else None,
            "tps_busy": med([single_tps(r) for r in self.busy]) if self.busy else None,
            "range": {"tps_1": _range([single_tps(r) for r in self.single]),
                      "tps_many": _range([aggregate_tps(g) for g in self.many]),
                      "tps_busy": _range([single_tps(r) for r in self.busy])},
            "tokens": sorted({r.tokens for r in [*self.single, *(r for g in self.many for r in g), *self.busy]}),
            "errors": self.errors()[:5],
        }
        out["busy_idle"] = (out["tps_busy"] / out["tps_1"]) if out["tps_busy"] and out["tps_1"] else None
        return out


@contextlib.contextmanager
def others_paused(servers: list[Server], measured: Server) -> Iterator[None]:
    """Measure one server with the others frozen, so that none pays for another's idle work."""
    with contextlib.ExitStack() as stack:
        for s in servers:
            if s is not measured:
                stack.enter_context(s.paused())
        yield


def run_rounds(servers: list[Server], a: argparse.Namespace) -> dict[str, Figures]:
    figs = {s.name: Figures() for s in servers}
    for s in servers:  # warm-up: our server loads the model on first use; both fill their caches
        stream_one(s, 0, 4)
    order = list(servers)
    phases = ["idle", "busy"] if a.hogs else ["idle"]
    for rnd in range(a.rounds):
        for phase in phases:
            print(f"# round {rnd + 1}/{a.rounds}: {phase}", file=sys.stderr, flush=True)
            if phase == "busy":
                with hogs(a.hogs):
                    for s in order:
                        with others_paused(servers, s):
                            figs[s.name].busy.append(stream_one(s, 0, a.max_tokens))
                continue
            for s in order:
                with others_paused(servers, s):
                    figs[s.name].single.append(stream_one(s, 0, a.max_tokens))
                    figs[s.name].many.append(concurrent(s, a.clients, a.max_tokens))
        order.reverse()
        phases.reverse()
    return figs


# -- the report ----------------------------------------------------------------------------------------------
def _num(v: float | None, fmt: str = ".1f", spread: tuple[float, float] | None = None) -> str:
    if v is None:
        return "-"
    return format(v, fmt) + (f" ({spread[0]:{fmt}}-{spread[1]:{fmt}})" if spread else "")


def _ratio(name: str, ours: float | None, peer: float | None) -> str:
    if ours is None or peer is None or peer == 0:
        return f"{name}: -"
    op, bound = TARGETS[name]
    r = ours / peer
    ok = r >= bound if op == ">=" else r <= bound
    return f"{name}: {r:.2f}x (target {op} {bound}x: {'met' if ok else 'not met'})"


def render(results: dict[str, dict[str, Any]], clients: int) -> str:
    cols = ["server", "tok/s 1 client", "TTFT 1 client s", "ms between tokens 1 client",
            f"aggregate tok/s {clients} clients",
            f"TTFT p50 s ({clients})", f"TTFT p95 s ({clients})", "tok/s busy", "busy/idle", "tokens per reply"]
    lines = ["tok/s: median (min-max) over the rounds; TTFT: over every request",
             "| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for name, s in results.items():
        lines.append("| " + " | ".join([
            name, _num(s["tps_1"], spread=s["range"]["tps_1"]), _num(s["ttft_1"], ".2f"),
            _num(s["itl_1"] * 1e3 if s["itl_1"] is not None else None, ".2f"),
            _num(s["tps_many"], spread=s["range"]["tps_many"]), _num(s["ttft_p50"], ".2f"), _num(s["ttft_p95"], ".2f"),
            _num(s["tps_busy"], spread=s["range"]["tps_busy"]), _num(s["busy_idle"], ".2f"),
            ",".join(map(str, s["tokens"]))]) + " |")
    ours = results.get("ours")
    if ours is None:
        return "\n".join(lines)
    ratios = []
    busy = ours["busy_idle"]
    if busy is not None:
        op, bound = TARGETS["busy/idle"]
        ratios.append(f"busy/idle (ours): {busy:.2f}x (target {op} {bound}x: {'met' if busy >= bound else 'not met'})")
    peer = results.get("llama-server")
    if peer is not None:
        ratios[:0] = [_ratio("tok/s 1 client", ours["tps_1"], peer["tps_1"]),
                      _ratio("aggregate tok/s", ours["tps_many"], peer["tps_many"]),
                      _ratio("p95 TTFT", ours["ttft_p95"], peer["ttft_p95"])]
        if ours["itl_1"] and peer["itl_1"]:
            ratios.insert(1, f"time between tokens, 1 client: {ours['itl_1'] / peer['itl_1']:.2f}x")
    base = results.get("baseline")
    if ratios:
        lines += ["", "ours / llama-server:" if peer is not None else "ours:"] + [f"* {r}" for r in ratios]
    if base is not None:
        lines += ["", "ours / baseline:"] + [
            f"* {label}: {ours[k] / base[k]:.2f}x" for label, k in (
                ("tok/s 1 client", "tps_1"), ("time between tokens, 1 client", "itl_1"),
                ("aggregate tok/s", "tps_many"), ("p95 TTFT", "ttft_p95"), ("tok/s busy", "tps_busy"))
            if ours.get(k) and base.get(k)]
    for name, s in results.items():
        if s["errors"]:
            lines.append(f"* {name}: failed requests, e.g. {s['errors'][0]}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds (each: 1 client, N clients, 1 client with hogs)")
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (and llama-server's slots)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads of both servers")
    ap.add_argument("--max-tokens", type=int, default=48, help="tokens per reply")
    ap.add_argument("--hogs", type=int, default=len(os.sched_getaffinity(0)),
                    help="busy-loop processes in the busy case (0: no busy case)")
    ap.add_argument("--quick", action="store_true", help="one round")
    ap.add_argument("--no-peer", action="store_true", help="only our server (llama-server is not built)")
    ap.add_argument("--no-busy", action="store_true", help="leave out the busy case (same as --hogs 0)")
    ap.add_argument("--peer-native", action="store_true",
                    help="llama-server built with GGML_NATIVE=ON instead of our CPU variant's options")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="also run ours from another checkout of this repository (e.g. a git worktree of main)")
    ap.add_argument("--baseline-cache", type=Path, metavar="DIR",
                    help="the baseline's library cache (GPT4ALL_LOADER_CACHE), for a change of native code")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.quick:
        a.rounds = 1
    if a.no_busy:
        a.hogs = 0
    if a.baseline_cache is not None and a.baseline is None:
        ap.error("--baseline-cache DIR goes with --baseline CHECKOUT")

    from gpt4all_loader.testing.realfiles import smollm2_path

    model = Path(smollm2_path())
    n_ctx = per_slot_context(model)
    logdir = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench_serve.{os.getpid()}"
    logdir.mkdir(parents=True, exist_ok=True)
    servers = [our_server(model, a.threads, a.clients, logdir)]
    if a.baseline is not None:
        servers.append(baseline_server(a.baseline, model, a.threads, a.clients, logdir, a.baseline_cache))
    if not a.no_peer:
        from peer_server import build_peer

        servers.append(peer_server(build_peer(native=a.peer_native), model, a.threads, a.clients, n_ctx, logdir))
    cmd = shlex.join(["python", *sys.argv])
    load_before = os.getloadavg()
    t0 = time.time()
    try:
        for s in servers:
            s.start()
        figs = run_rounds(servers, a)
    finally:
        for s in servers:
            s.stop()
    results = {name: f.summary() for name, f in figs.items()}
    header = (f"command: {cmd}\n{model.name}; {os.cpu_count()} CPUs, threads={a.threads}, clients={a.clients}, "
              f"max_tokens={a.max_tokens}, rounds={a.rounds}, hogs={a.hogs}, per-slot n_ctx={n_ctx}; load average "
              f"before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}; {time.time() - t0:.0f} s; "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              + "\n".join(f"{s.name}: " + " ".join([*(f"{k}={shlex.quote(v)}" for k, v in s.env.items()),
                                                      shlex.join(s.cmd)]) for s in servers))
    if a.json:
        print(json.dumps({"header": header, "results": results}, indent=2))
    else:
        print(header)
        print(render(results, a.clients))
    return 0


if __name__ == "__main__":
    sys.exit(main())
