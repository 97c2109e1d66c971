"""``gpt4all-probe``: what each model file is, which backend loads it, and why the others do not.

    gpt4all-probe PATH...            files and directories (searched recursively for model files)
    gpt4all-probe --json PATH...     a JSON list of report objects (see the README for the keys)
    gpt4all-probe --estimate --ctx-size 4096 --gpu-layers 20 PATH
    gpt4all-probe --estimate --gpu-layers auto [--free-vram MIB] PATH   the most layers that fit
    gpt4all-probe --estimate --exact PATH   also the engine's own buffer sizes (loads it in a child process)
    gpt4all-probe --load [--all-backends] PATH   really load it (in a child process) and evaluate a token
    gpt4all-probe --verify PATH      compare the md5 of a file of GPT4All's published list (reads it all)

Exit status: 0 every file is loadable; 1 some file is not (or a --load or --verify failed); 2 usage error or an
unreadable path (missing, permission denied, symlink loop, a directory without model files).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import stat
import sys
from typing import Any, Iterable, cast

from ..engines import child
from ..engines.child import ChildResult
from ..errors import UsageError
from ..probing import ProbeReport, probe
from ..reports import EngineMemory, LoadCheck

MODEL_EXTENSIONS = {".bin", ".gguf", ".ggml", ".ggjt", ".ggmf", ".ggla"}
_QUANT_SUFFIX = re.compile(r"\.(q\d(_[0-9a-z]+)*|f16|f32|bf16|iq\d\w*)$", re.I)
#: first four bytes of the containers we know (little-endian u32 magics as they lie on disk, and GGUF)
MAGICS = {b"GGUF", b"lmgg", b"fmgg", b"tjgg", b"algg", b"mmgg"}


# --------------------------------------------------------------------------------------------------
# Finding files

def _head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(4)
    except OSError:
        return b""


def looks_like_model(path: str) -> bool:
    """A file worth probing inside a directory: a known magic, or a model-ish name."""
    head = _head(path)
    if head in MAGICS:
        return True
    name = os.path.basename(path).lower()
    ext = os.path.splitext(name)[1]
    if ext == ".bin":
        return False  # .bin without a ggml magic: a PyTorch/other checkpoint, skip silently
    return ext in MODEL_EXTENSIONS or bool(_QUANT_SUFFIX.search(name))


def expand(paths: Iterable[str]) -> list[tuple[str, str | None]]:
    """[(path, error)] for each file to probe; error is set for paths that cannot be used."""
    out: list[tuple[str, str | None]] = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as e:
            out.append((p, f"cannot read {p}: {e.strerror or e}"))
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append((p, None))
            continue
        found: list[str] = []
        errors: list[str] = []

        def onerror(e: OSError) -> None:
            errors.append(f"cannot read {e.filename}: {e.strerror or e}")

        seen: set[tuple[int, int]] = set()
        for root, dirs, files in os.walk(p, onerror=onerror, followlinks=True):
            try:
                rs = os.stat(root)
                key = (rs.st_dev, rs.st_ino)
            except OSError:
                continue
            if key in seen:  # a directory symlink cycle
                dirs[:] = []
                continue
            seen.add(key)
            dirs.sort()
            for name in sorted(files):
                fp = os.path.join(root, name)
                try:
                    if not stat.S_ISREG(os.stat(fp).st_mode):
                        continue
                except OSError:
                    continue  # dangling links inside a directory are not worth a complaint
                if looks_like_model(fp):
                    found.append(fp)
        if errors and not found:
            out.append((p, errors[0]))
        elif not found:
            out.append((p, f"no model files in directory {p}"))
        else:
            out.extend((f, None) for f in found)
    return out


# --------------------------------------------------------------------------------------------------
# Formatting

def human_count(n: int | None) -> str:
    if not n:
        return "?"
    for div, suf in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            v = n / div
            return f"{v:.1f}{suf}" if v < 10 and round(v, 1) != int(v) else f"{v:.0f}{suf}"
    return str(n)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    v = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if v < 1024 or unit == "TiB":
            return f"{v:.0f} {unit}" if unit == "B" else f"{v:.1f} {unit}"
        v /= 1024
    return f"{n} B"


class Style:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def _w(self, code: str, s: str) -> str:
        return f"\x1b[{code}m{s}\x1b[0m" if self.enabled else s

    def bold(self, s: str) -> str:
        return self._w("1", s)

    def good(self, s: str) -> str:
        return self._w("32;1", s)

    def bad(self, s: str) -> str:
        return self._w("31;1", s)

    def dim(self, s: str) -> str:
        return self._w("2", s)


def _format_line(r: ProbeReport) -> str:
    from ..engines.catalog import format_label

    parts = [format_label(r.format, r.format_version)]
    if r.endianness and r.endianness != "little":
        parts.append(f"{r.endianness}-endian")
    if r.size is not None:
        parts.append(human_bytes(r.size))
    s = ", ".join(parts)
    if r.description:
        s += f" ({r.description})"
    return s


def _quant_line(r: ProbeReport) -> str:
    items = sorted(r.tensor_types.items(), key=lambda kv: -kv[1].get("bytes", 0))
    detail = ", ".join(f"{k} x{v.get('count', 0)}" for k, v in items[:6])
    if len(items) > 6:
        detail += ", ..."
    head = r.file_type_name or (str(r.file_type) if r.file_type is not None else "")
    if head and detail:
        return f"{head} ({detail})"
    return head or detail or "-"


#: the hyperparameters the text report lists (all of them are in --json)
_HPARAMS_SHOWN = ("n_vocab", "n_embd", "n_head", "n_head_kv", "n_layer", "n_ff", "falcon_version")


def render(r: ProbeReport, st: Style, *, verbose: bool = False, show_memory: bool = True) -> str:
    lines = [st.bold(r.path)]

    def row(k: str, v: str) -> None:
        lines.append(f"  {k:<13} {v}")

    if r.error:
        row("error", st.bad(r.error))
        return "\n".join(lines)
    row("format", _format_line(r))
    if r.kind and r.kind not in ("model",):
        row("kind", r.kind)
    if r.architecture or r.n_params:
        h = r.hparams
        extra = f", {h['n_layer']} layers" if isinstance(h.get("n_layer"), int) else ""
        row("model", f"{r.architecture or '?'}, {human_count(r.n_params)} parameters{extra}")
        shown = [f"{k} {h[k]}" for k in _HPARAMS_SHOWN if isinstance(h.get(k), int) and not isinstance(h.get(k), bool)]
        if shown:
            row("hparams", ", ".join(shown))
    if r.tensor_types or r.file_type is not None:
        row("quantization", _quant_line(r))
    if r.context_length or r.n_ctx:  # n_ctx: what the variant and the layers were chosen for (load's default)
        planned = f", planned at {r.n_ctx}" if r.n_ctx else ""
        row("context", (f"{r.context_length} (trained)" if r.context_length else "not recorded") + planned)
    if r.tokenizer or r.chat_template:
        row("tokenizer", (r.tokenizer or "?") + (", chat template" if r.chat_template else ""))
    if r.published:
        p = r.published
        row("published", f"GPT4All's {_published_line(p)} (nomic-ai/gpt4all models.json at {p['commit'][:8]}, "
                         f"{p['date']})")
    elif not r.verify:
        named = next((n for n in r.notes if n.startswith("named like GPT4All's")), None)
        if named:
            row("published", st.bad(named))
    if r.verify:
        v = r.verify
        row("verify", st.good(v["message"]) if v["ok"] else st.bad(v["message"]) if v["ok"] is False else v["message"])
    if r.chat_template_source and r.chat_template_source != "file":
        src = r.chat_template_source
        row("chat", f"GPT4All's prompt template for {src.split(':', 1)[1]}" if src.startswith("gpt4all:") else
            f"{src.split(':', 1)[-1]}, the default (no template in the file, not in GPT4All's list)")
    if r.truncated:
        row("truncated", st.bad("yes"))
    for a in r.anomalies:  # what some eras refuse: the verdict below is of an era that reads it
        by = [b for b, rs in r.reasons.items() if any(x.startswith(a["detail"]) for x in rs)]
        row("anomaly", a["detail"] + (f" (refused by {', '.join(by)})" if by else ""))
    if show_memory and r.memory:
        m = r.memory
        row("memory", f"ctx {m['ctx_size']}, {m['gpu_layers']}/{m['n_layer']} layers on GPU: "
                      f"RAM {human_bytes(m['ram_bytes'])}, VRAM {human_bytes(m['vram_bytes'])} "
                      f"(weights {human_bytes(m['weights_bytes'])}, KV {human_bytes(m['kv_bytes'])}, "
                      f"compute {human_bytes(m['compute_bytes'])})")
        if len(m.get("items") or []) > 1:
            row("devices", ", ".join(
                f"{it['device']} {human_bytes(it['bytes'])} ({it['layers']} layers"
                + (" and the output" if it.get("output") else "")
                + (f"; {'fits' if it['fits'] else 'does NOT fit'} in {human_bytes(it['free_bytes'])} free less "
                   f"{human_bytes(it['reserve_bytes'])} reserve" if "fits" in it else "") + ")"
                for it in m["items"]))
        ex = m.get("exact")
        if ex:
            if ex.get("ok"):
                p = ex["parts"]
                row("engine", f"{human_bytes(ex['total_bytes'])} by {ex['backend']} (model {human_bytes(p['model'])}, "
                              f"KV {human_bytes(p['kv'])}, compute {human_bytes(p['compute'])}); estimate "
                              f"{human_bytes(m['total_bytes'])}, {ex['estimate_error_pct']:+.1f} %")
            else:
                row("engine", st.bad(f"no figures from {ex.get('backend')}: {ex.get('error')}"))
    if r.loadable:
        row("verdict", st.good(f"LOADABLE by {r.backend}/{r.variant}: READY") if r.ready else
            st.good(f"LOADABLE by {r.backend}") + ": " + st.bad(_not_ready(r)))
    else:
        top = _main_reason(r)
        row("verdict", st.bad("NOT LOADABLE") + (f": {top}" if top else ""))
    if r.suggestion:
        row("upgrade" if r.loadable and r.variant else "fix", r.suggestion)
    distinct = {tuple(rs) for rs in r.reasons.values() if rs}
    if verbose or (not r.loadable and len(distinct) > 1):
        for b, rs in r.reasons.items():
            if rs and (verbose or b != r.backend):
                row(st.dim(b) if st.enabled else b, st.dim("; ".join(rs)) if st.enabled else "; ".join(rs))
    for ld in r.load or []:
        if ld.get("ok"):
            ev = "one token evaluated" if ld.get("token_evaluated") else "no token evaluated"
            row("load", st.good(f"ok with {ld.get('backend')}/{ld.get('variant') or '?'}") +
                f" in {ld.get('load_s')} s, {ev}" + (f" in {ld.get('eval_s')} s" if ld.get("eval_s") else ""))
        else:
            row("load", st.bad(f"FAILED with {ld.get('backend')}") + f": {ld.get('error')}")
    return "\n".join(lines)


def _published_line(p: dict[str, Any]) -> str:
    """E.g. "GPT4All Falcon, q4_0, 8 GB RAM"."""
    from ..published import Entry

    return Entry(**p).summary()


def _not_ready(r: ProbeReport) -> str:
    """Why a loadable file cannot be loaded on this machine yet (the fix line says what to run)."""
    if not (r.backends_built or {}).get(r.backend or ""):
        return "not built here"
    return "no built variant runs here"


def _main_reason(r: ProbeReport) -> str | None:
    """The reason of the backend that came closest: the newest one refusing for a specific cause."""
    rs = [v for v in r.reasons.values() if v]
    if not rs:
        return None
    first = [x[0] for x in rs]
    # A reason every backend shares (not a model, truncated, big-endian) is the headline.
    if all(f == first[0] for f in first):
        return first[0]
    generic = ("predates GGUF", "stopped loading at b1012")
    specific = [x for x in rs if not any(g in x[0] for g in generic)]
    return (specific or rs)[-1][0]


# --------------------------------------------------------------------------------------------------
# Loading in a child process

def _smoke_in_child(path: str, backend: str, *, device: str, ctx: int | None, vocab_only: bool, timeout: float,
                    env: dict[str, str] | None = None) -> tuple[ChildResult | None, str | None]:
    """:mod:`gpt4all_loader.smoke` on ``path`` in a child: (what it left, None), or (what it left or None,
    why it gave no answer: it could not start, ran past ``timeout`` or crashed)."""
    args = [path, "--backend", backend, "--device", device] + (["--ctx-size", str(ctx)] if ctx else []) + \
        (["--vocab-only"] if vocab_only else [])
    try:
        cp = child.run("smoke", args, timeout=timeout, env=env)
    except OSError as e:
        return None, f"cannot start the child process: {e}"
    if cp.timed_out:
        return None, cp.ending
    if cp.crashed:
        assert cp.returncode is not None
        tail = cp.last_error_line()
        return cp, f"the backend crashed ({child.signal_name(cp.returncode)})" + \
            (f"; last message: {tail}" if tail else "")
    return cp, None


def load_in_child(path: str, backend: str, *, device: str, ctx: int | None, vocab_only: bool,
                  timeout: float) -> LoadCheck:
    cp, failed = _smoke_in_child(path, backend, device=device, ctx=ctx, vocab_only=vocab_only, timeout=timeout)
    if cp is None:
        return {"backend": backend, "ok": False, "error": failed}
    res = cast("LoadCheck | None", cp.last_json())  # the JSON line of smoke.run
    if failed or res is None:
        tail = (cp.last_error_line() or (cp.stdout.strip().splitlines() or ["no output"])[-1])
        return {"backend": backend, "ok": False, "wall_s": cp.wall_s,
                "error": failed or f"exit status {cp.returncode}: {tail}"}
    res["backend"] = res.get("backend") or backend
    res["wall_s"] = cp.wall_s
    return res


def engine_memory_in_child(path: str, backend: str, *, device: str, ctx: int, timeout: float) -> EngineMemory:
    """The buffer sizes the engine itself allocates for ``path`` at ``ctx`` tokens: loads it in a
    child process (as ``--load`` does) with the engine's log on (``G4A_VERBOSE=1``) and parses the
    "buffer size" lines (:func:`memory.parse_engine_log`).  ``ok`` is False with ``error`` set when
    the load failed or the engine logged no sizes."""
    from ..memory import parse_engine_log

    out: EngineMemory = {"backend": backend, "ctx_size": ctx, "ok": False, "error": None}
    cp, failed = _smoke_in_child(path, backend, device=device, ctx=ctx, vocab_only=False, timeout=timeout,
                                 env={"G4A_VERBOSE": "1"})
    if cp is None or failed:
        out["error"] = failed
        return out
    parsed = parse_engine_log(cp.stderr)
    res = cp.last_json() or {}
    out["parts"], out["devices"], out["total_bytes"] = parsed["parts"], parsed["devices"], parsed["total_bytes"]
    out["lines"], out["variant"] = parsed["lines"], res.get("variant")
    if not res.get("ok"):
        out["error"] = res.get("error") or f"exit status {cp.returncode}"
    elif not parsed["total_bytes"]:
        out["error"] = f"backend {backend} logged no buffer sizes"
    else:
        out["ok"] = True
    return out


# --------------------------------------------------------------------------------------------------

def _gpu_layers(v: str) -> int | str:
    if v == "auto":
        return v
    try:
        return int(v)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of layers or 'auto', not {v!r}") from None


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="gpt4all-probe",
        description="Say what llama.cpp-family model files are, which pinned backend loads them, and why not.")
    ap.add_argument("paths", nargs="+", metavar="PATH", help="model files or directories (searched recursively)")
    ap.add_argument("--json", action="store_true", help="print a JSON list of reports")
    ap.add_argument("--estimate", action="store_true", help="show the RAM/VRAM estimate")
    ap.add_argument("--ctx-size", type=int, default=None, metavar="N", help="context size for the estimate/load")
    ap.add_argument("--gpu-layers", type=_gpu_layers, default=0, metavar="N|auto",
                    help="layers offloaded, for the estimate; auto: the most that fit in free VRAM less a reserve")
    ap.add_argument("--free-vram", type=int, default=None, metavar="MIB",
                    help="free VRAM for --gpu-layers auto (default: what the CUDA driver reports)")
    ap.add_argument("--exact", action="store_true",
                    help="with --estimate: also load the file in a child process and report the engine's own "
                         "buffer sizes")
    ap.add_argument("--device", default="auto", help="device for the variant choice and --load (auto, cpu, cuda)")
    ap.add_argument("--kv", action="store_true", help="include the GGUF key/values in --json output")
    ap.add_argument("--load", action="store_true", help="load with the chosen backend in a child process")
    ap.add_argument("--all-backends", action="store_true", help="with --load: try every backend that claims the file")
    ap.add_argument("--load-timeout", type=float, default=600.0, metavar="S")
    ap.add_argument("--verify", action="store_true",
                    help="compare the md5 of files in GPT4All's published list with the published one (reads them)")
    ap.add_argument("--published-table", default=None, metavar="FILE",
                    help="a list of published files in the format of the packaged gpt4all_published.json, "
                         "used instead of it")
    ap.add_argument("-v", "--verbose", action="store_true", help="show every backend's reasons")
    return ap




def printable(text: str) -> str:
    """``text`` with the undecodable bytes of file names (kept by Python as surrogates) shown as ``\\xNN``
    escapes, and with characters the output encoding lacks escaped too, so that no name stops the
    report."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    enc = getattr(sys.stdout, "encoding", None) or "utf-8"
    try:
        return text.encode(enc, "backslashreplace").decode(enc)
    except LookupError:
        return text


def _run(args: argparse.Namespace) -> int:
    if args.ctx_size is not None and args.ctx_size <= 0:
        raise UsageError("--ctx-size must be positive")
    if args.gpu_layers != "auto" and args.gpu_layers < 0:
        raise UsageError("--gpu-layers must not be negative")
    if args.free_vram is not None and args.free_vram < 0:
        raise UsageError("--free-vram must not be negative")
    if args.exact and not args.estimate:
        raise UsageError("--exact goes with --estimate")
    free = args.free_vram * 1024 * 1024 if args.free_vram is not None else None
    table = None
    if args.published_table is not None:
        from ..published import load_table

        try:
            table = load_table(args.published_table)
        except ValueError as e:
            raise UsageError(str(e)) from None
    items = expand(args.paths)
    reports: list[ProbeReport] = []
    unreadable = False
    for path, err in items:
        if err is not None:
            r = ProbeReport(path=path, error=err, error_kind="unreadable")
        else:
            r = probe(path, estimate_ctx=args.ctx_size, gpu_layers=args.gpu_layers, with_kv=args.kv,
                      device=args.device, free_vram_bytes=free, verify=args.verify, published_table=table)
        if r.error_kind == "unreadable":
            unreadable = True
        if args.exact and r.loadable and r.backend and r.memory and not r.vocab_only:
            ex = engine_memory_in_child(path, r.backend, device=args.device, ctx=r.memory["ctx_size"],
                                        timeout=args.load_timeout)
            if ex.get("ok"):
                ex["estimate_error_pct"] = round((r.memory["total_bytes"] / ex["total_bytes"] - 1) * 100, 2)
            r.memory["exact"] = ex
        if args.load and r.loadable:
            r.load = []
            from ..engines.catalog import verdicts as _verdicts

            if args.all_backends and r.facts is not None:
                cands = [v.backend for v in sorted(_verdicts(r.facts), key=lambda v: -v.priority) if v.loadable]
            else:
                cands = [r.backend] if r.backend else []
            for b in cands:
                r.load.append(load_in_child(path, b, device=args.device, ctx=args.ctx_size,
                                            vocab_only=r.vocab_only, timeout=args.load_timeout))
        reports.append(r)

    if args.json:
        sys.stdout.write(json.dumps([r.to_dict() for r in reports], indent=2) + "\n")
    else:
        st = Style(sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
        blocks = [render(r, st, verbose=args.verbose, show_memory=args.estimate) for r in reports]
        sys.stdout.write(printable("\n\n".join(blocks) + "\n"))
    sys.stdout.flush()

    if unreadable:
        return 2
    bad = any(not r.loadable for r in reports)
    bad_load = any(not ld.get("ok") for r in reports for ld in (r.load or []))
    bad_md5 = any(r.verify and r.verify["ok"] is False for r in reports)
    return 1 if bad or bad_load or bad_md5 else 0


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    try:
        args = ap.parse_args(argv)
    except SystemExit as e:  # argparse already printed the usage message
        return 0 if e.code == 0 else 2
    try:
        return _run(args)
    except UsageError as e:
        sys.stderr.write(f"gpt4all-probe: {e}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("gpt4all-probe: interrupted\n")
        return 130
    except BrokenPipeError:
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        except OSError:
            pass
        return 1
    except Exception as e:  # noqa: BLE001 - never a traceback
        sys.stderr.write(f"gpt4all-probe: internal error: {type(e).__name__}: {e}\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
