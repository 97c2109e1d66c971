"""``python -m gpt4all_loader.testing.smoke``: the same as ``python -m gpt4all_loader.smoke`` (scripts call it)."""
import sys

from ..smoke import main

if __name__ == "__main__":
    sys.exit(main())
