"""Hugging Face folders of other architectures: the pinned sdist's own ``convert_hf_to_gguf.py``.

The script ships inside the newest pinned sdist (llama-cpp-python 0.3.36, the ``gguf-2026-10``
backend) with its ``conversion`` package and its own ``gguf-py``.  The sdist is fetched and
hash-checked by :func:`gpt4all_loader.engines.sdist.fetch` like every other build input, and only
those members are extracted into the cache.  The script runs in a child process and needs torch,
numpy, transformers, sentencepiece, pyyaml and tqdm at run time (the ``convert`` extra).  A
quantized ``--outtype`` is then made by the newest backend's own quantizer.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from ..errors import BuildError, ConvertError, UsageError
from .common import NEWEST, Options, Temps, check_space, outtype_number, quantize_in_child, say

#: packages convert_hf_to_gguf.py imports (import name -> pip name)
HF_PACKAGES = {"torch": "torch", "numpy": "numpy", "transformers": "transformers",
               "sentencepiece": "sentencepiece", "yaml": "pyyaml", "tqdm": "tqdm"}
#: members of the sdist's vendored llama.cpp that the HF converter needs
_HF_MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def missing_hf_packages() -> list[str]:
    """pip names of the packages convert_hf_to_gguf.py needs that are not importable here."""
    return [pip for mod, pip in HF_PACKAGES.items() if importlib.util.find_spec(mod) is None]


def converter_dir() -> Path:
    """The HF converter of the newest pinned sdist, extracted once into the cache (hash-checked sdist)."""
    from ..engines import cache, sdist
    from ..engines.manifest import load_manifest

    spec = load_manifest()[NEWEST]
    root = cache.cache_root() / "convert"
    dest = root / f"{NEWEST}-{spec.sha256[:16]}"
    marker = dest / ".complete"
    try:
        tarball = sdist.fetch(spec.sdist, spec.sha256)
    except BuildError as e:
        raise ConvertError(f"cannot get the converter: {e}") from None
    if marker.is_file() and marker.read_text().strip() == spec.sha256:
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=root))
    try:
        with tarfile.open(tarball, "r:gz") as tf:
            top = None
            for m in tf:
                parts = m.name.split("/")
                if top is None:
                    top = parts[0]
                prefix = f"{top}/vendor/llama.cpp/"
                if not m.name.startswith(prefix):
                    continue
                rel = m.name[len(prefix):]
                if not any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in _HF_MEMBERS):
                    continue
                if ".." in rel.split("/") or rel.startswith("/"):
                    raise ConvertError(f"{tarball}: unsafe member name {m.name!r}")
                target = tmp / rel
                if m.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                elif m.isfile():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    fsrc = tf.extractfile(m)
                    assert fsrc is not None
                    with fsrc, open(target, "wb") as fdst:
                        shutil.copyfileobj(fsrc, fdst)
        if not (tmp / "convert_hf_to_gguf.py").is_file() or not (tmp / "gguf-py" / "gguf").is_dir():
            raise ConvertError(f"{tarball}: convert_hf_to_gguf.py or gguf-py not found in the sdist")
        (tmp / ".complete").write_text(spec.sha256 + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except (OSError, tarfile.TarError) as e:
        raise ConvertError(f"cannot extract the converter from {tarball}: {e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _hf_param_bytes(src: Path) -> int:
    """Bytes of the weights at 4 bytes per parameter (from safetensors headers, else file sizes x 2)."""
    total = 0
    for f in sorted(src.glob("*.safetensors")):
        try:
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                hdr = json.loads(fh.read(min(n, 100 << 20)))
            for k, v in hdr.items():
                if k != "__metadata__" and isinstance(v, dict):
                    c = 1
                    for d in v.get("shape", []):
                        c *= int(d)
                    total += 4 * c
        except (OSError, ValueError, struct.error):
            total += 2 * f.stat().st_size
    if not total:
        total = 2 * sum(f.stat().st_size for f in src.glob("pytorch_model*.bin"))
    return total


def convert_hf(src: Path, out: Path, opts: Options) -> Path:
    """Convert a Hugging Face model folder: GPT-J/LLaMA/MPT safetensors here (:mod:`.hf`), the rest with
    the pinned sdist's convert_hf_to_gguf.py."""
    from .hf import route

    how, what = route(src)
    if how == "native":
        from .hf import convert_folder

        return convert_folder(src, out, opts, what)
    if opts.format == "ggml":
        raise UsageError(f"--format ggml is offered for GPT-J and MPT folders only; {src}: {what}")
    weights = [*src.glob("*.safetensors"), *src.glob("pytorch_model*.bin"), *src.glob("consolidated*.pth")]
    if not weights:
        raise ConvertError(f"{src} has a config.json but no weights (*.safetensors or pytorch_model*.bin)")
    ftype_out = outtype_number(opts.outtype)
    missing = missing_hf_packages()
    if missing:
        raise ConvertError(f"{src}: {what}, so it goes to upstream's convert_hf_to_gguf.py, which needs "
                           "packages that are not installed: "
                           + ", ".join(missing) + "; install them with: pip install " + " ".join(missing)
                           + "  (or: pip install 'gpt4all-loader[convert]')")
    conv = converter_dir()
    direct = {0: "f32", 1: "f16", 32: "bf16"}
    hf_outtype = direct.get(ftype_out, "auto")
    params4 = _hf_param_bytes(src)
    need = params4 if ftype_out == 0 else params4 // 2
    if ftype_out not in direct:
        need += params4 // 2
    check_space(out.parent, need, f"{out.name} ({opts.outtype})")
    temps = Temps(out)
    try:
        stage = temps.new(hf_outtype)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(conv / "gguf-py")]
                                            + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.pop("NO_LOCAL_GGUF", None)
        cmd = [sys.executable, str(conv / "convert_hf_to_gguf.py"), str(src), "--outfile", str(stage),
               "--outtype", hf_outtype]
        say(opts, f"gpt4all-convert: {src} -> {out} with {NEWEST}'s convert_hf_to_gguf.py ({hf_outtype})")
        if opts.quiet:
            captured = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      errors="replace")
            rc, log = captured.returncode, captured.stdout or ""
        else:
            rc, log = subprocess.run(cmd, env=env, stdout=sys.stderr, stderr=sys.stderr).returncode, ""
        if rc != 0:
            tail = "\n".join(log.strip().splitlines()[-15:])
            if rc < 0 or rc == 137:
                why = "it was killed (out of memory?)"
            else:
                why = f"it exited with status {rc}"
            if "No space left on device" in log:
                why = "the disk is full"
            raise ConvertError(f"convert_hf_to_gguf.py could not convert {src}: {why}"
                               + (f"; its last messages:\n{tail}" if tail else "; see its messages above"))
        if not stage.stat().st_size:
            raise ConvertError(f"convert_hf_to_gguf.py wrote nothing for {src}")
        final = stage
        if ftype_out not in direct:
            final = quantize_in_child(stage, temps, opts)
        temps.commit(final)
    finally:
        temps.cleanup()
    return out


