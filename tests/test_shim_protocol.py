"""engines/shim.py's ShimLib (the type of Backend.lib) declares exactly the functions of the shim
header, with the header's parameter names in the header's order: the C side and the typed Python side
cannot drift apart."""
from __future__ import annotations

import inspect
import re
from pathlib import Path

from gpt4all_loader.engines.shim import ShimLib

HEADER = Path(__file__).resolve().parent.parent / "backends" / "shim" / "g4a_shim.h"


def header_functions() -> dict[str, list[str]]:
    """{function: [parameter names]} of the declarations between the CDEF markers."""
    text = HEADER.read_text()
    text = text[text.index("/* CDEF-BEGIN */"):text.index("/* CDEF-END */")]
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    out: dict[str, list[str]] = {}
    for m in re.finditer(r"\b(g4a_\w+)\s*\(([^)]*)\)\s*;", text):
        params = [p.strip() for p in m.group(2).split(",")]
        out[m.group(1)] = [] if params == ["void"] else [re.findall(r"\w+", p)[-1] for p in params]
    return out


def protocol_functions() -> dict[str, list[str]]:
    return {name: [p for p in inspect.signature(f).parameters if p != "self"]
            for name, f in vars(ShimLib).items() if name.startswith("g4a_")}


def test_the_header_is_read():
    funcs = header_functions()
    assert len(funcs) >= 25 and funcs["g4a_sample"] == ["model", "params", "history", "n_history", "rng_state"]


def test_shimlib_declares_every_function_of_the_header_with_its_parameters():
    assert protocol_functions() == header_functions()


def test_the_protocol_keeps_the_header_order():
    assert list(protocol_functions()) == list(header_functions())
