"""Write an upgraded GGUF file from the tensors of a legacy file, dequantized by that file's own era.

Shared by the ggml-era LLaMA upgrade (:mod:`.legacy`) and the upgrade of GPT4All's 2023 zoo (:mod:`.zoo`):
each builds the GGUF header and the plan of tensors, this module opens the era's engine and writes them.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ..errors import BackendError, ConvertError, UnsupportedModelError
from ..formats.gguf import GgufHeader
from .common import ALIGN, Options, Temps, check_space, quantize_in_child, say, write_error

if TYPE_CHECKING:  # pragma: no cover - the native binding is imported only when a file is dequantized
    from ..engines.native import Backend
    from ..formats.facts import FileFacts

#: one tensor of an upgrade: (legacy name, gguf name, ne, src type id, src offset, src nbytes, out type id)
PlanEntry = tuple[str, str, list[int], int, int, int, int]
_CHUNK = 1 << 22  # elements dequantized per native call (16 MiB of float32)


def era_backend(facts: FileFacts) -> tuple[str, Backend]:
    """The backend (and its opened library) that reads this file: it dequantizes the file's types.
    (The shim fills the 2023 ggml's fp16 table before dequantizing: no warm-up load is needed.)"""
    from ..engines import native
    from ..plan import plan

    try:
        name, choice = plan(facts, device="cpu").require()
    except UnsupportedModelError as e:
        raise ConvertError(f"{e}; so none can dequantize it") from None
    except BackendError as e:
        raise ConvertError(f"dequantizing it needs a backend that cannot run here: {e}") from None
    return name, native.open_backend(name, choice.variant)



def write_upgraded(src: Path, out: Path, opts: Options, facts: FileFacts, meta: GgufHeader, plan: list[PlanEntry],
                   layout: Any, era_name: str | None, era: Backend | None, needs_quantizer: bool) -> None:
    """Write ``meta`` and the tensors of ``plan`` to ``out`` (atomically): F32/F16 copied as they are,
    anything else dequantized by the era's backend ``era``; through the newest quantizer if asked."""
    from ..engines.native import ffi as _ffi

    quantized = any(layout[p[3]].name not in ("F32", "F16") for p in plan)
    infos = [(g, ne, ot, math.prod(ne) * (4 if ot == 0 else 2)) for _, g, ne, _, _, _, ot in plan]
    for name, ne, ot, nbytes in infos:
        meta.add_tensor(name, ne, ot, nbytes)
    header, offsets = meta.encode(ALIGN)
    total = len(header) + offsets[-1] + infos[-1][3] if infos else len(header)
    check_space(out.parent, total * (2 if needs_quantizer else 1), f"{out.name} ({opts.outtype})")

    temps = Temps(out)
    try:
        stage = temps.new("f32" if needs_quantizer else "gguf")
        say(opts, f"gpt4all-convert: {src} ({facts.description}) -> {out}"
                   + (f"; dequantizing with {era_name}" if era_name and quantized else ""))
        ffi = _ffi()
        buf = None
        try:
            with open(src, "rb") as fin, open(stage, "wb") as fo:
                fo.write(header)
                base = len(header)
                for i, ((name, gname, ne, tid, off, nbytes, otype), rel) in enumerate(zip(plan, offsets)):
                    t = layout[tid]
                    fo.write(b"\0" * (base + rel - fo.tell()))
                    say(opts, f"[{i + 1:>4}/{len(plan)}] {gname:<28} {t.name:>5} -> {'F32' if otype == 0 else 'F16'} "
                               f"{'x'.join(map(str, ne))}")
                    if (t.name == "F32" and otype == 0) or (t.name == "F16" and otype == 1):
                        _copy(fin, fo, off, nbytes)
                        continue
                    # dequantize with the era's own code, whole blocks at a time (a type other than
                    # F32 put the era's backend in ``era`` above)
                    assert era is not None
                    per = max(1, _CHUNK // t.block) * t.block
                    if buf is None:
                        buf = ffi.new("float[]", _CHUNK + 256)
                    n_total = math.prod(ne)
                    fin.seek(off)
                    done = 0
                    while done < n_total:
                        n = min(per, n_total - done)
                        raw = fin.read(n // t.block * t.size)
                        if len(raw) != n // t.block * t.size:
                            raise ConvertError(f"{src}: the file became shorter while reading tensor {name}")
                        if era.lib.g4a_dequantize(tid, ffi.from_buffer(raw), buf, n) != 0:
                            raise ConvertError(f"{src}: {era_name} could not dequantize tensor {name} "
                                               f"({t.name}): {era.last_error()}")
                        fo.write(ffi.buffer(buf, 4 * n))
                        done += n
                fo.flush()
                os.fsync(fo.fileno())
        except OSError as e:
            if isinstance(e, (FileNotFoundError, PermissionError)) and not os.access(src, os.R_OK):
                raise ConvertError(f"cannot read {src}: {e.strerror or e}") from None
            raise write_error(e, out) from None
        final = stage
        if needs_quantizer:
            final = quantize_in_child(stage, temps, opts)
        temps.commit(final)
    finally:
        temps.cleanup()


def _copy(fin: IO[bytes], fo: IO[bytes], off: int, nbytes: int) -> None:
    fin.seek(off)
    left = nbytes
    while left:
        chunk = fin.read(min(left, 1 << 24))
        if not chunk:
            raise ConvertError(f"{fin.name}: the file became shorter while reading")
        fo.write(chunk)
        left -= len(chunk)


