"""What every conversion route shares: output types, options, temporary outputs and the quantizer child.

A conversion writes OUT to temporary files in OUT's directory and renames the finished one into
place (``Temps``), so a failure, an interrupt or an engine abort in the quantizer child leaves nothing
behind.
"""
from __future__ import annotations

import errno
import glob
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..engines import child
from ..errors import ConvertError, UsageError
from ..formats.legacy import LEGACY_N_CTX

#: the backend whose sdist ships the HF converter and whose quantizer makes quantized outputs
NEWEST = "gguf-2026-10"
#: the training context written into upgraded legacy files, which do not store one
DEFAULT_CONTEXT = LEGACY_N_CTX
#: GGUF tensor data alignment written by every route
ALIGN = 32


# --------------------------------------------------------------------------------------------------
# Output types

def _outtypes() -> dict[str, int]:
    """--outtype name (lower case) -> llama_ftype number, for the types the newest quantizer makes."""
    from ..formats.ggml_types import GGUF_FTYPE_NAMES

    dropped = {4, 5, 6, 33, 34, 35, 1024}  # Q4_1_SOME_F16, Q4_2, Q4_3, ARM repacks, GUESSED
    return {n.removeprefix("MOSTLY_").removeprefix("ALL_").lower(): k
            for k, n in GGUF_FTYPE_NAMES.items() if k not in dropped}


def outtype_number(outtype: str) -> int:
    table = _outtypes()
    key = outtype.lower()
    if key not in table:
        raise UsageError(f"unknown --outtype {outtype!r}; choose one of: {', '.join(table)}")
    return table[key]


# --------------------------------------------------------------------------------------------------
# Small helpers

@dataclass
class Options:
    outtype: str = "f16"
    context_length: int = DEFAULT_CONTEXT
    rms_norm_eps: float | None = None
    rope_freq_base: float | None = None
    threads: int = 0
    force: bool = False
    quiet: bool = False
    format: str | None = None  # "gguf" or "ggml" (Hugging Face GPT-J/MPT folders); None: from OUT's suffix
    tokenizer: str | None = None  # the model's tokenizer.json (Falcon/StarCoder zoo files carry no merges)


def say(opts: Options, msg: str) -> None:
    if not opts.quiet:
        print(msg, file=sys.stderr, flush=True)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def check_space(directory: Path, need: int, what: str) -> None:
    try:
        free = shutil.disk_usage(directory).free
    except OSError as e:
        raise ConvertError(f"cannot check free space in {directory}: {e.strerror or e}") from None
    margin = 16 << 20
    if free < need + margin:
        raise ConvertError(f"not enough free space in {directory} for {what}: about {human(need)} needed, "
                           f"{human(free)} free; free some space or write OUT elsewhere")


def write_error(e: OSError, out: Path) -> ConvertError:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ConvertError(f"the disk holding {out.parent} is full (or over quota) while writing {out.name}; "
                            f"nothing was left behind: free some space or write OUT elsewhere")
    return ConvertError(f"cannot write {out}: {e.strerror or e}")


class Temps:
    """Temporary files beside OUT: all removed unless handed over by :meth:`keep`."""

    def __init__(self, out: Path):
        self.out = out
        self.paths: list[Path] = []

    def new(self, tag: str) -> Path:
        try:
            fd, name = tempfile.mkstemp(prefix=f".{self.out.name}.", suffix=f".{tag}.part", dir=self.out.parent)
        except OSError as e:
            raise write_error(e, self.out) from None
        os.close(fd)
        p = Path(name)
        self.paths.append(p)
        return p

    def cleanup(self) -> None:
        for p in self.paths:
            try:
                p.unlink()
            except FileNotFoundError:
                pass
            except OSError:
                pass
        self.paths.clear()

    def commit(self, tmp: Path) -> None:
        try:
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; give OUT the usual mode
            os.replace(tmp, self.out)
        except OSError as e:
            raise write_error(e, self.out) from None
        self.paths.remove(tmp)


def check_paths(src: Path, out: Path, opts: Options) -> None:
    if not os.path.lexists(src):
        raise UsageError(f"{src}: no such file or directory")
    parent = out.parent
    if not parent.exists():
        raise UsageError(f"cannot write {out}: directory {parent} does not exist")
    if not parent.is_dir():
        raise UsageError(f"cannot write {out}: {parent} is not a directory")
    if out.is_dir():
        raise UsageError(f"cannot write {out}: it is a directory")
    same = os.path.realpath(src) == os.path.realpath(out)
    if not same and out.exists():
        try:
            same = os.path.samefile(src, out)
        except OSError:
            same = False
    if same:
        raise UsageError(f"OUT ({out}) is SRC itself; the source is never overwritten: choose another OUT")
    if out.exists() and not opts.force:
        raise UsageError(f"{out} exists; pass --force to replace it")
    if not os.access(parent, os.W_OK):
        raise ConvertError(f"cannot write {out}: no write permission in {parent}")


def quantize_in_child(stage: Path, temps: Temps, opts: Options, backend: str = NEWEST,
                      mode: str = "catalog") -> Path:
    """Quantize ``stage`` to ``opts.outtype`` with ``backend`` in a child process; returns the new temp file.

    An engine that aborts (an assertion on a file it cannot handle) takes down only the child: the
    temporary files are registered in ``temps`` before it starts, so this process removes them (and
    any the quantizer itself left) and reports the failure instead of dying with them left behind."""
    dst = temps.new(opts.outtype.lower())
    say(opts, f"quantizing to {opts.outtype.upper()} with {backend} ...")
    proc = child.run("convert.quantize", [mode, str(stage), str(dst), str(outtype_number(opts.outtype)), backend,
                                          str(opts.threads)], keep_stdout=False)
    if proc.returncode != 0:
        for left in dst.parent.glob(glob.escape(dst.name) + ".*.part"):  # quantize()'s own temporary file
            left.unlink(missing_ok=True)
        if "No space left on device" in proc.stderr:
            raise write_error(OSError(errno.ENOSPC, "No space left on device"), temps.out)
        why = (f"the quantizer crashed ({proc.ending})" if proc.crashed
               else proc.last_error_line() or f"the quantizer exited with status {proc.returncode}")
        raise ConvertError(f"quantizing to {opts.outtype} failed: {why}; nothing was left behind")
    return dst


