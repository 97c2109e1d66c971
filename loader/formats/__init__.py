"""Model files: what a file is (sniff and read), and writing files of every container.

``sniff.read_facts(path)`` reads a header and answers with :class:`facts.FileFacts`; nothing here
loads native code or knows which engine reads what (that is :mod:`gpt4all_loader.engines`).
``gguf`` holds GGUF's codes and its one writer, ``gguf_reader`` and ``legacy`` the readers of GGUF and
of the 2023 containers (ggml, ggmf, ggjt, ggla, ggmm and GPT4All's GPT-J ``ggml``), ``ggml_types``
the tensor types and file types of every era, and ``writer`` the writers of legacy headers and of the
tiny models that tests, the demo and the benchmarks use.
"""
