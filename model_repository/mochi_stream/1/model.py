"""Triton adapter: the pipeline as a stream, a response per denoising step then the video
(mochi_runtime.serving.orchestrator does the work)."""
import triton_python_backend_utils as pb_utils

from mochi_runtime.serving.orchestrator import FrontModel


class TritonPythonModel:
    def initialize(self, args):
        self.front = FrontModel(pb_utils, args, streaming=True)

    def execute(self, requests):
        return self.front.execute(requests)

    def finalize(self):
        self.front.finalize()
