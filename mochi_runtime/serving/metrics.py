"""Each Triton model's custom metrics as a class with named attributes, built once in `initialize`.

Updates go through `adapters.SerialMetric`: one lock per stub process, so no two metric updates ever overlap
(two at once crash Triton 2.51's python backend). A lock rather than one writer thread: an update is applied
before the response that follows it is sent, so a client that reads /metrics after its answer sees it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import adapters as A


def _fields(pb_utils, model: str, spec: dict[str, tuple]) -> tuple[dict[str, Any], list]:
    """spec: attribute -> (kind, name, description[, buckets]); every series labelled with the model."""
    labels = {"model": model}
    made = {attr: getattr(A, kind)(pb_utils, name, desc, *rest, labels=labels)
            for attr, (kind, name, desc, *rest) in spec.items()}
    families = [fam for fam, _ in made.values()] + A.count_failures(pb_utils, model)
    return {attr: metric for attr, (_, metric) in made.items()}, families


@dataclass
class DiTMetrics:
    latency: Any  # mochi_denoise_latency_seconds: DiT time per generation
    steps: Any  # mochi_denoise_steps_total
    active: Any  # mochi_active_generations (gauge)
    restarts: Any  # mochi_dit_group_restarts_total
    cancelled: Any  # mochi_generations_cancelled_total
    queued: Any  # mochi_dit_queued_generations (gauge)
    queue_wait: Any  # mochi_dit_queue_wait_seconds
    families: list = field(default_factory=list, repr=False)  # kept alive with the model

    @classmethod
    def create(cls, pb_utils) -> "DiTMetrics":
        metrics, families = _fields(pb_utils, "mochi_dit", {
            "latency": ("histogram", "mochi_denoise_latency_seconds", "DiT denoising time per generation",
                        A.LATENCY_BUCKETS),
            "steps": ("counter", "mochi_denoise_steps_total", "Denoising steps run"),
            "active": ("gauge", "mochi_active_generations", "Generations running on the DiT group"),
            "restarts": ("counter", "mochi_dit_group_restarts_total", "Times the DiT worker group was respawned"),
            "cancelled": ("counter", "mochi_generations_cancelled_total", "Generations stopped by cancellation"),
            "queued": ("gauge", "mochi_dit_queued_generations", "Generations waiting for the DiT group"),
            "queue_wait": ("histogram", "mochi_dit_queue_wait_seconds", "Time a generation waited for the DiT group",
                           A.LATENCY_BUCKETS),
        })
        m = cls(**metrics, families=families)
        m.active.set(0)  # a gauge outlives a stub that died with work in flight: start from the truth
        m.queued.set(0)
        return m


@dataclass
class T5Metrics:
    latency: Any  # mochi_t5_latency_seconds
    hits: Any  # mochi_t5_cache_hits_total
    misses: Any  # mochi_t5_cache_misses_total
    families: list = field(default_factory=list, repr=False)

    @classmethod
    def create(cls, pb_utils) -> "T5Metrics":
        metrics, families = _fields(pb_utils, "t5_encoder", {
            "latency": ("histogram", "mochi_t5_latency_seconds", "T5 prompt encoding time per request",
                        A.LATENCY_BUCKETS),
            "hits": ("counter", "mochi_t5_cache_hits_total", "Prompts answered from the embedding cache"),
            "misses": ("counter", "mochi_t5_cache_misses_total", "Prompts encoded by T5"),
        })
        return cls(**metrics, families=families)


@dataclass
class VAEMetrics:
    latency: Any  # mochi_vae_latency_seconds
    families: list = field(default_factory=list, repr=False)

    @classmethod
    def create(cls, pb_utils) -> "VAEMetrics":
        metrics, families = _fields(pb_utils, "vae_decoder", {
            "latency": ("histogram", "mochi_vae_latency_seconds", "VAE decode + mp4 encode time per request",
                        A.LATENCY_BUCKETS),
        })
        return cls(**metrics, families=families)
