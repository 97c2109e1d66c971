"""One engine, one fresh process: load a model, time the first token, prompt processing and generation.

Run by bench/bench_generate.py, never imported by it: every engine runs in its own interpreter (ours
in the project's, the peers in their own virtual environments) so that no two copies of ggml ever
share a process.  Standard library only, apart from the engine itself.

    python gen_child.py ENGINE MODEL PROMPT_FILE --n-gen 64 --threads 2 --n-ctx 512 --reps 3 [--backend B]

ENGINE: ours | llama-cpp-python | llama-cpp-python-fa | gpt4all2 | gpt4all1.  Prints one JSON object:

* ``load_s``     the engine's load call; ``ttft_s`` from the start of the load to the first generated
  token (the first request of a fresh process, so it is not in ``pp``/``tg``);
* ``hwm_before_kb`` / ``hwm_after_load_kb`` / ``hwm_end_kb``  peak RSS (VmHWM) after the imports,
  after the load, at the end; ``rss_after_load_kb`` (VmRSS);
* ``pp``  prompt tokens per second, one value per rep: the whole prompt from an empty context;
* ``tg``  generated tokens per second, one value per rep: (tokens - 1) / (last token - first token),
  greedy, no repeat penalty, through the engine's streaming text API;
* ``text`` the first greedy continuation (the parent checks that the engines agree).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def status_kb(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Clock:
    """Timestamps of generated tokens."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.pieces: list[str] = []

    def tick(self, piece: str) -> None:
        self.times.append(time.perf_counter())
        self.pieces.append(piece)

    def rate(self) -> float | None:
        if len(self.times) < 2 or self.times[-1] <= self.times[0]:
            return None
        return (len(self.times) - 1) / (self.times[-1] - self.times[0])


# -- engines: each returns (load, pp(tokens or text) -> seconds, gen(n) -> Clock, n_prompt) ---------------
def engine_ours(a: argparse.Namespace, prompt: str):
    import gpt4all_loader

    def load():
        return gpt4all_loader.load(a.model, backend=a.backend, device="cpu", n_ctx=a.n_ctx, n_threads=a.threads)

    def setup(m):
        toks = m.tokenize(prompt)

        def pp() -> float:
            m.reset()
            t = time.perf_counter()
            m.evaluate(toks)
            return time.perf_counter() - t

        def gen(n: int) -> Clock:
            c = Clock()
            for piece in m.generate(toks, max_tokens=n, temperature=0.0, repeat_penalty=1.0, stream=True):
                c.tick(piece)
            return c

        return pp, gen, len(toks)

    return load, setup


def engine_llama_cpp_python(a: argparse.Namespace, prompt: str, flash_attn: bool = False):
    import inspect

    import llama_cpp
    from llama_cpp import Llama

    # 0.1.x: no n_threads_batch/flash_attn, and create_completion takes text only (it tokenizes " " + text)
    old = getattr(llama_cpp, "__version__", "0.1.x").startswith("0.1.")
    accepted = inspect.signature(Llama.__init__).parameters

    def load():
        kw = dict(n_ctx=a.n_ctx, n_threads=a.threads, n_threads_batch=a.threads, n_batch=min(512, a.n_ctx),
                  n_gpu_layers=0, flash_attn=flash_attn, verbose=False)
        return Llama(model_path=a.model, **{k: v for k, v in kw.items() if k in accepted})

    def setup(m):
        toks = m.tokenize(prompt.encode(), add_bos=True)
        request = prompt if old else toks

        def pp() -> float:
            m.reset()
            t = time.perf_counter()
            m.eval(toks)
            return time.perf_counter() - t

        def gen(n: int) -> Clock:
            c = Clock()
            m.reset()
            for chunk in m.create_completion(request, max_tokens=n, temperature=0.0, top_k=1, repeat_penalty=1.0,
                                             stream=True):
                c.tick(chunk["choices"][0]["text"])
            return c

        return pp, gen, len(toks)

    return load, setup


def engine_gpt4all(a: argparse.Namespace, prompt: str, major: int):
    from gpt4all import GPT4All

    def load():
        kw = dict(model_path=os.path.dirname(os.path.abspath(a.model)), allow_download=False, n_threads=a.threads)
        if major >= 2:
            kw.update(device="cpu", n_ctx=a.n_ctx, verbose=False)
        return GPT4All(os.path.basename(a.model), **kw)

    def setup(m):
        n_batch = min(512, a.n_ctx)

        def prompt_only(cb):
            if major >= 2:
                m.model.prompt_model(prompt, "%1", cb, n_predict=0, n_batch=n_batch, reset_context=True)
            else:
                m.model.prompt_model(prompt, cb, n_predict=0, n_batch=n_batch, reset_context=True)

        def pp() -> float:
            t = time.perf_counter()
            prompt_only(lambda tok, text: True)
            return time.perf_counter() - t

        def gen(n: int) -> Clock:
            c = Clock()

            def cb(tok: int, text: str) -> bool:
                c.tick(text)
                return True

            m.generate(prompt, max_tokens=n, temp=0.0, top_k=1, top_p=1.0, repeat_penalty=1.0,
                       n_batch=n_batch, callback=cb)
            return c

        return pp, gen, a.n_prompt_hint

    return load, setup


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("engine")
    ap.add_argument("model")
    ap.add_argument("prompt_file")
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n-ctx", type=int, default=512)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--backend", default=None, help="ours: force this backend")
    ap.add_argument("--n-prompt-hint", type=int, default=0,
                    help="gpt4all has no tokenizer in its Python API: the prompt's token count from ours")
    a = ap.parse_args()
    with open(a.prompt_file, encoding="utf-8") as f:
        prompt = f.read()

    if a.engine == "ours":
        load, setup = engine_ours(a, prompt)
    elif a.engine in ("llama-cpp-python", "llama-cpp-python-fa"):
        load, setup = engine_llama_cpp_python(a, prompt, flash_attn=a.engine.endswith("-fa"))
    elif a.engine in ("gpt4all2", "gpt4all1"):
        load, setup = engine_gpt4all(a, prompt, major=int(a.engine[-1]))
    else:
        raise SystemExit(f"unknown engine {a.engine}")

    hwm_before = status_kb("VmHWM")
    t0 = time.perf_counter()
    model = load()
    load_s = time.perf_counter() - t0
    hwm_load, rss_load = status_kb("VmHWM"), status_kb("VmRSS")
    pp, gen, n_prompt = setup(model)
    first = gen(a.n_gen)
    ttft = first.times[0] - t0 if first.times else None
    pps, tgs = [], []
    for _ in range(a.reps):
        dt = pp()
        if n_prompt and dt > 0:
            pps.append(n_prompt / dt)
        r = gen(a.n_gen).rate()
        if r:
            tgs.append(r)
    out = dict(ok=True, engine=a.engine, load_s=load_s, ttft_s=ttft, hwm_before_kb=hwm_before,
               hwm_after_load_kb=hwm_load, rss_after_load_kb=rss_load, hwm_end_kb=status_kb("VmHWM"),
               n_prompt=n_prompt, n_gen=len(first.times), pp=pps, tg=tgs, text="".join(first.pieces))
    sys.stdout.flush()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
