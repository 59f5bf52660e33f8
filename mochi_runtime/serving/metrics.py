"""Each Triton model's custom metrics as a class with named attributes, built once in `initialize`.

Updates go through `adapters.SerialMetric`: one lock per stub process, so no two metric updates ever overlap
(two at once crash Triton 2.51's python backend). A lock rather than one writer thread: an update is applied
before the response that follows it is sent, so a client that reads /metrics after its answer sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, make_dataclass
from typing import Any, Callable, ClassVar

from . import adapters as A


# model -> attribute -> (kind, name, description[, buckets]): every custom series the models export
SERIES: dict[str, dict[str, tuple]] = {
    "mochi_dit": {
        "latency": ("histogram", "mochi_denoise_latency_seconds", "DiT denoising time per generation",
                    A.LATENCY_BUCKETS),
        "steps": ("counter", "mochi_denoise_steps_total", "Denoising steps run"),
        "computed": ("counter", "mochi_denoise_steps_computed_total", "Denoising steps that ran the DiT's blocks"),
        "skipped": ("counter", "mochi_denoise_steps_skipped_total",
                    "Denoising steps that reused a cached residual instead (step caching)"),
        "active": ("gauge", "mochi_active_generations", "Generations running on the DiT group"),
        "restarts": ("counter", "mochi_dit_group_restarts_total", "Times the DiT worker group was respawned"),
        "cancelled": ("counter", "mochi_generations_cancelled_total", "Generations stopped by cancellation"),
        "queued": ("gauge", "mochi_dit_queued_generations", "Generations waiting for the DiT group"),
        "queue_wait": ("histogram", "mochi_dit_queue_wait_seconds", "Time a generation waited for the DiT group",
                       A.LATENCY_BUCKETS),
    },
    "t5_encoder": {
        "latency": ("histogram", "mochi_t5_latency_seconds", "T5 prompt encoding time per request", A.LATENCY_BUCKETS),
        "hits": ("counter", "mochi_t5_cache_hits_total", "Prompts answered from the embedding cache"),
        "misses": ("counter", "mochi_t5_cache_misses_total", "Prompts encoded by T5"),
    },
    "vae_decoder": {
        "latency": ("histogram", "mochi_vae_latency_seconds", "VAE decode + mp4 encode time per request",
                    A.LATENCY_BUCKETS),
    },
}


@dataclass
class ModelMetrics:
    """The series of SERIES[MODEL] as attributes, each labelled with the model; mochi_request_failures_total
    {model=MODEL, code} comes with them."""

    MODEL: ClassVar[str] = ""

    @classmethod
    def create(cls, pb_utils):
        """The series, registered with this stub (adapters.release_triton_objects drops them at finalize)."""
        labels = {"model": cls.MODEL}
        m = cls(**{attr: getattr(A, kind)(pb_utils, name, desc, *rest, labels=labels)
                   for attr, (kind, name, desc, *rest) in SERIES[cls.MODEL].items()})
        A.count_failures(pb_utils, cls.MODEL)
        m.start()
        return m

    def start(self) -> None:
        """Values to hold before the first request."""


def metrics_class(model: str, start: Callable[[Any], None] | None = None) -> type[ModelMetrics]:
    """A dataclass with one attribute per series of SERIES[model] (`m.active`, `m.latency`, ...)."""
    namespace: dict[str, Any] = {"MODEL": model, **({"start": start} if start else {})}
    return make_dataclass(f"{model}_metrics", [(attr, Any, None) for attr in SERIES[model]], bases=(ModelMetrics,),
                          namespace=namespace)


def _zero_gauges(m) -> None:
    m.active.set(0)  # a gauge outlives a stub that died with work in flight: start from the truth
    m.queued.set(0)


DiTMetrics = metrics_class("mochi_dit", start=_zero_gauges)
T5Metrics = metrics_class("t5_encoder")
VAEMetrics = metrics_class("vae_decoder")
