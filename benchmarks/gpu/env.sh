# Sourced at the start of every GPU-machine run: carried wheels (diffusers) and NCCL safety settings.
set -e
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
if ls .whl-xdit/*.whl >/dev/null 2>&1; then  # xDiT side-by-side: its own directory, after the image's packages
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/xdit-site .whl-xdit/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/xdit-site
fi
if ls .whl-cudnn/*.whl >/dev/null 2>&1; then  # --attention fp8: cuDNN's frontend against the image's cuDNN
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/cudnn-site .whl-cudnn/*.whl
  export PYTHONPATH=$PYTHONPATH:/tmp/cudnn-site
fi
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch; print('torch', torch.__version__)"
set +e
