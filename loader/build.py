"""``python -m gpt4all_loader.build``: the same as ``gpt4all-build`` (an entry point users were given).

The command line lives in :mod:`gpt4all_loader.cli.build`, the build itself in :mod:`gpt4all_loader.engines.build`.
"""
import sys

from .cli.build import main

if __name__ == "__main__":
    sys.exit(main())
