"""Triton adapter: the pipeline as a stream, a response per denoising step then the video
(mochi_runtime.serving.orchestrator does the work)."""
import triton_python_backend_utils as pb_utils

from mochi_runtime.serving.orchestrator import triton_model

TritonPythonModel = triton_model(pb_utils, streaming=True)
