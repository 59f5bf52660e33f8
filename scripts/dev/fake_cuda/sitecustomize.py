"""Development aid, never used by the product or CI: lets xfuser 0.7.0 import on a machine without a GPU.

xfuser asks torch about the accelerator while it imports and refuses without one. With this directory first on
PYTHONPATH and MOCHI_FAKE_CUDA_FOR_XFUSER=1, torch answers those questions as an H100 would; tensors stay on
the CPU and process groups use gloo, so xfuser's Ulysses path (plain SDPA, which needs no LSE) runs for real.
See scripts/dev/xdit_cpu_check.py.
"""
import os

if os.environ.get("MOCHI_FAKE_CUDA_FOR_XFUSER"):
    import types

    import torch

    torch.cuda.is_available = lambda: True
    torch.version.cuda = "13.0"
    torch.cuda.current_device = lambda: 0
    torch.cuda.device_count = lambda: 1
    torch.cuda.set_device = lambda *a, **k: None
    torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H100 80GB HBM3"
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_properties = lambda *a, **k: types.SimpleNamespace(
        name="NVIDIA H100 80GB HBM3", major=9, minor=0, gcnArchName="", total_memory=80 * 2**30,
        multi_processor_count=132)
