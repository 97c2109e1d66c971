"""The pinned engines: which one reads a file, which build of it this machine runs, and binding it.

The pipeline after :mod:`gpt4all_loader.formats`: ``manifest`` (the declared backends, as data) →
``catalog`` and ``validate`` (the verdict of every backend on a file's facts, with reasons) →
``variants`` and ``cuda`` (which built library this machine can run) → ``native`` (the cffi binding
of one library's ``g4a_*`` ABI).  ``build``, ``sdist`` and ``cache`` fetch, verify and compile the
libraries and say where they live.  :mod:`gpt4all_loader.plan` joins these steps for one file.
"""
