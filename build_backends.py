#!/usr/bin/env python3
"""Build the pinned backends from this checkout: ``gpt4all-build`` (gpt4all_loader.cli.build) run from the tree.

Works before the package is installed, and always uses this tree's ``loader/`` (and, through its
``backends`` link, this tree's manifest and shim), never another installed copy.  Same flags:

    python build_backends.py [--only NAME] [--variant VARIANT] [--cuda-arch LIST] [--clean] [--list [--json]] [--jobs N]
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

LOADER = Path(__file__).resolve().parent / "loader"

if __name__ == "__main__":
    spec = importlib.util.spec_from_file_location("gpt4all_loader", LOADER / "__init__.py",
                                                  submodule_search_locations=[str(LOADER)])
    package = importlib.util.module_from_spec(spec)
    sys.modules["gpt4all_loader"] = package
    spec.loader.exec_module(package)

    from gpt4all_loader.cli.build import main

    raise SystemExit(main())
