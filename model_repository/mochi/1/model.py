"""Triton adapter: the pipeline in one response (mochi_runtime.serving.orchestrator does the work)."""
import triton_python_backend_utils as pb_utils

from mochi_runtime.serving.orchestrator import FrontModel


class TritonPythonModel:
    def initialize(self, args):
        self.front = FrontModel(pb_utils, args, streaming=False)

    def execute(self, requests):
        return self.front.execute(requests)

    def finalize(self):
        self.front.finalize()
