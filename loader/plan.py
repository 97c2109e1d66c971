"""One load plan: from what a file is to the backend, the variant and the library that will run it.

``load()``, ``probe()``, ``quantize()`` and ``gpt4all-convert`` all ask :func:`plan`, so they can never
name different backends or variants for the same file: facts -> every backend's verdict (catalog) ->
the chosen backend (built ones first) -> the variant this machine runs for that file (variants, with
the facts, so the CUDA type and memory checks apply) -> the library (native).  The context the plan is
made for is :func:`default_n_ctx` unless the caller names one, so the layers that fit are counted for
the context that will be allocated.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .engines import variants
from .engines.catalog import Verdict, choose
from .engines.manifest import build_command
from .engines.variants import RunnableChoice, VariantChoice
from .errors import BackendError, UnsupportedModelError
from .formats.facts import FileFacts
from .formats.legacy import LEGACY_N_CTX

#: the most context a file gets by default: modern training contexts (32k ... 1M) would allocate
#: gigabytes of KV cache that a short exchange never uses; ``n_ctx=`` asks for more
DEFAULT_N_CTX_CAP = 4096


def default_n_ctx(facts: FileFacts) -> int:
    """The context a file runs with when the caller names none: its training context capped at
    :data:`DEFAULT_N_CTX_CAP`, or :data:`LEGACY_N_CTX` (2048, what the 2023 LLaMA models were trained on)
    for files that do not record one (the ggml-era LLaMA containers).

    The one rule: ``load()``, ``probe()`` (its plan and its memory estimate), ``gpt4all-serve`` and
    :func:`gpt4all_loader.memory.estimate` all ask it, so probe and load choose the same variant and
    the same GPU layers for a file.
    """
    n_ctx_train = facts.hparams.get("n_ctx_train")
    if isinstance(n_ctx_train, (int, float)) and not isinstance(n_ctx_train, bool) and n_ctx_train >= 1:
        return int(min(n_ctx_train, DEFAULT_N_CTX_CAP))
    return LEGACY_N_CTX

if TYPE_CHECKING:  # pragma: no cover
    from .engines.cuda import FitLayers


@dataclass(frozen=True)
class LoadPlan:
    """Where a file would run, and why; :meth:`require` turns a missing piece into the error to raise."""

    facts: FileFacts
    #: every backend's verdict, in manifest order
    verdicts: list[Verdict]
    #: the backend that runs the file (None: none reads it, or the one asked for refuses it)
    chosen: Verdict | None
    why_backend: str
    #: the variant of the chosen backend this machine runs (None without a chosen backend)
    variant: VariantChoice | None
    #: backend -> variants built in the cache
    built: dict[str, list[str]] = field(default_factory=dict)
    #: the backend the caller asked for, if any
    requested: str | None = None
    #: the context the variant and its GPU layers were chosen for (the caller's, else :func:`default_n_ctx`)
    n_ctx: int = 0

    @property
    def rejected(self) -> dict[str, list[str]]:
        return {v.backend: list(v.reasons) for v in self.verdicts if not v.loadable}

    def require(self) -> tuple[str, RunnableChoice]:
        """(backend, variant) to run, or the library error that says why there is none and what would do."""
        f, path = self.facts, self.facts.path
        what = f.description or f.format
        if f.truncated:
            raise UnsupportedModelError(
                f"{path}: {what}: the file is truncated (the header describes {f.data_bytes_expected} bytes of "
                f"tensor data after offset {f.data_offset}, the file has {f.size} bytes in all); download it again")
        if self.requested is not None:
            asked = next((v for v in self.verdicts if v.backend == self.requested), None)
            if asked is None:
                raise BackendError(f"unknown backend {self.requested!r}; declared: "
                                   + ", ".join(v.backend for v in self.verdicts))
            if not asked.loadable:
                raise UnsupportedModelError(f"{path}: {f.description}: backend {self.requested} cannot load it: "
                                            + "; ".join(asked.reasons))
        if self.chosen is None or self.variant is None:
            detail = "; ".join(f"{b}: {', '.join(r)}" for b, r in self.rejected.items())
            raise UnsupportedModelError(f"{path}: {what}: no backend of ours loads it"
                                        + (f" ({detail})" if detail else ""))
        name = self.chosen.backend
        if self.variant.variant is None:
            if not self.built.get(name):  # the common first-run case: say the one command
                raise BackendError(f"{path}: {what}: backend {name} reads it but is not built here; "
                                   f"build it with: {build_command(name)}")
            raise BackendError(f"{path}: backend {name} has no variant this machine can run: {self.variant.reason}")
        return name, RunnableChoice(self.variant.variant, self.variant.device, self.variant.reason,
                                    self.variant.n_gpu_layers)


def plan(facts: FileFacts, *, device: str = "auto", backend: str | None = None, n_ctx: int | None = None,
         n_gpu_layers: int | None = None, fit_layers: FitLayers | None = None) -> LoadPlan:
    """The plan for ``facts`` on this machine at ``n_ctx`` tokens (None: :func:`default_n_ctx`).  Never
    raises for the file itself (see :meth:`LoadPlan.require`); DeviceError for ``device="cuda"`` that
    cannot be had.  ``fit_layers`` (``memory.fit_layers``, passed in by load() and probe, which sit above
    the estimates) fits the offloaded layers to the free VRAM; without it a CUDA choice leaves the memory
    unchecked."""
    if n_ctx is None:
        n_ctx = default_n_ctx(facts)
    built = {name: list(vs) for name, vs in variants.built_variants().items()}
    # among the backends that read the file, one built on this machine wins over a better unbuilt one
    best, verdicts = choose(facts, prefer=[b for b, vs in built.items() if vs])
    if backend is not None:
        asked = next((v for v in verdicts if v.backend == backend), None)
        chosen = asked if asked is not None and asked.loadable else None
        why = f"backend {backend} requested by the caller"
    else:
        chosen = best
        why = f"{best.backend} reads {facts.description or facts.format}" if best is not None else ""
    variant = None
    if chosen is not None and not facts.truncated:
        # the facts let the choice check tensor types and free VRAM; n_gpu_layers None = all that fit
        variant = variants.choose_variant(chosen.backend, device, facts=facts, n_gpu_layers=n_gpu_layers,
                                          n_ctx=n_ctx, fit_layers=fit_layers)
    return LoadPlan(facts, verdicts, chosen, why, variant, built, backend, n_ctx)


def sequences(backend: str, parallel: int) -> int:
    """How many generations one context of ``backend`` decodes together when ``parallel`` are asked for:
    all of them where the engine has llama.cpp's batch API (api 4 and later: ``G4A_ENGINE_SEQUENCES`` in
    ``backends/shim/g4a_shim.cpp``), else one (the others wait their turn)."""
    from .engines.manifest import load_manifest

    spec = load_manifest().get(backend)
    return parallel if spec is not None and spec.api >= 4 else 1
