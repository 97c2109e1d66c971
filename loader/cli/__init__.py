"""The command lines: ``gpt4all-probe``, ``gpt4all-convert``, ``gpt4all-build``, ``gpt4all-serve`` and the demo.

Each module parses arguments, calls the library and turns its exceptions into messages and exit
statuses (0 success, 1 failure, 2 usage); none holds logic another entry point would need.
"""
