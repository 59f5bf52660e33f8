"""Triton adapter: the pipeline in one response (mochi_runtime.serving.orchestrator does the work)."""
import triton_python_backend_utils as pb_utils

from mochi_runtime.serving.orchestrator import triton_model

TritonPythonModel = triton_model(pb_utils, streaming=False)
