"""gpt4all-build: fetch, verify and compile the pinned backends into the cache.

    gpt4all-build                                # every CPU variant of every backend
    gpt4all-build --only gguf-2026-10 --variant cpu
    gpt4all-build --list [--json]                # what is declared, and what is built
    gpt4all-build --clean [--only X]             # remove build trees and libraries
    gpt4all-build --variant cuda                 # the CUDA variant of every backend that has one
    gpt4all-build --variant cuda --only gguf-2026-10 --cuda-arch 90-real

``python -m gpt4all_loader.cli.build`` and, in a checkout, ``python build_backends.py`` are the same.
How a library is made is described in :mod:`gpt4all_loader.engines.build`.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

from ..engines import cache
from ..engines.build import COLD_BUILD, build_one, listing, log, needs_build
from ..engines.manifest import load_manifest
from ..errors import BuildError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpt4all-build", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", action="append", default=[], metavar="NAME",
                    help="build only this backend (repeatable, or comma-separated)")
    ap.add_argument("--variant", action="append", default=[], metavar="VARIANT",
                    help="build only this variant (repeatable); default: every CPU variant")
    ap.add_argument("--list", action="store_true", help="list every declared backend variant, built or not")
    ap.add_argument("--json", action="store_true", help="with --list: print a JSON list")
    ap.add_argument("--clean", action="store_true", help="remove the build trees and libraries of the selection")
    ap.add_argument("--jobs", "-j", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--cuda-arch", metavar="LIST", default=None,
                    help="CMAKE_CUDA_ARCHITECTURES for CUDA variants, e.g. '90-real' (default: [cuda] "
                         "architectures of the manifest, or $G4A_CUDA_ARCHITECTURES)")
    args = ap.parse_args(argv)

    try:
        specs = load_manifest()
    except (BuildError, OSError, ValueError, KeyError) as e:
        print(f"error: cannot read the backend manifest: {e}", file=sys.stderr)
        return 2
    only = [n for item in args.only for n in item.split(",") if n]
    unknown = [n for n in only if n not in specs]
    if unknown:
        print(f"error: unknown backend(s) {unknown}; declared: {', '.join(specs)}", file=sys.stderr)
        return 2
    selected = {n: s for n, s in specs.items() if not only or n in only}

    if args.list:
        rows = [r for r in listing(selected) if not args.variant or r["variant"] in args.variant]
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            print(f"{'backend':<16} {'variant':<12} {'built':<6} {'sdist':<28} path")
            for r in rows:
                built = "yes" if r["built"] else "no"
                print(f"{r['name']:<16} {r['variant']:<12} {built:<6} {r['sdist']:<28} {r['path']}")
        return 0

    if args.clean:
        for spec in selected.values():
            for vname in spec.variants:
                if args.variant and vname not in args.variant:
                    continue
                for p in (cache.library_path(spec.name, vname), cache.record_path(spec.name, vname)):
                    p.unlink(missing_ok=True)
                shutil.rmtree(cache.build_dir() / spec.name / vname, ignore_errors=True)
            if not args.variant:
                shutil.rmtree(cache.build_dir() / spec.name, ignore_errors=True)
        log(f"cleaned {', '.join(selected)}")
        return 0

    jobs = []
    for spec in selected.values():
        for vname, var in spec.variants.items():
            if args.variant:
                if vname in args.variant:
                    jobs.append((spec, vname))
            elif var.gpu is None:
                jobs.append((spec, vname))
    if not jobs:
        print("error: nothing selected to build", file=sys.stderr)
        return 2

    pending = [f"{spec.name}/{vname}" for spec, vname in jobs if needs_build(spec, vname, args.cuda_arch)]
    if pending:
        log(f"{len(pending)} of {len(jobs)} libraries to build: {', '.join(pending)}")
        log(f"a cold build of every CPU variant takes {COLD_BUILD}; each library is built once, into "
            f"{cache.lib_dir()}, and reused until its inputs change")
    results, failed = [], False
    for i, (spec, vname) in enumerate(jobs, 1):
        log(f"({i}/{len(jobs)}) {spec.name}/{vname}")
        try:
            results.append(build_one(spec, vname, args.jobs, args.cuda_arch))
        except (BuildError, OSError) as e:
            failed = True
            print(f"\nerror: {spec.name}/{vname} failed:\n{e}\n", file=sys.stderr)
            results.append({"backend": spec.name, "variant": vname, "status": "FAILED", "seconds": 0.0,
                            "size": None})
    print(f"\n{'backend':<16} {'variant':<12} {'status':<7} {'time':>8} {'size':>9}")
    for r in results:
        size = f"{r['size'] / 1e6:.1f} MB" if r["size"] else "-"
        print(f"{r['backend']:<16} {r['variant']:<12} {r['status']:<7} {r['seconds']:>7.0f}s {size:>9}")
    print(f"cache: {cache.cache_root()}")
    return 1 if failed else 0




if __name__ == "__main__":
    sys.exit(main())
