# Sourced after benchmarks/gpu/env.sh on a GPU machine: the trimmed Triton 2.51 server (from nvidia-pytriton: the
# server binary, python backend, 3.12 stub, cache, their libraries), tritonclient (gRPC) and numpy<2
# (the 2.51 stub corrupts string tensors under numpy 2), unpacked from the carried .gpu/site.tar.xz
# (built by benchmarks/gpu/pack_serving_site.sh).
#
# The python stub ignores PYTHONPATH: it runs the interpreter of the `python3` first on PATH, with that
# venv's site-packages. So we make a venv holding links to the image's torch venv packages except numpy
# and what is built against numpy 2 (scipy, scikit-learn: transformers imports sklearn when it finds it),
# plus a .pth for the unpacked site (numpy<2) and the repo, and run the server (and the client side) with
# its python: $SERVE_PY. The image's own python (numpy 2) stays as it is for everything else.
set -e
mkdir -p /tmp/gpu-site
TORCH_SITE=$(python3 -c "import site; print(site.getsitepackages()[0])")
rm -rf /tmp/serve-venv /tmp/gpu-site/site && tar -xJf .gpu/site.tar.xz -C /tmp/gpu-site
python3 -m venv --without-pip /tmp/serve-venv
SV_SITE=$(/tmp/serve-venv/bin/python3 -c "import site; print(site.getsitepackages()[0])")
for e in "$TORCH_SITE"/*; do
  case "$(basename "$e")" in numpy*|scipy*|sklearn*|scikit_learn*) ;; *) ln -sfn "$e" "$SV_SITE/" ;; esac
done
printf '%s\n' /tmp/gpu-site/site /tmp/site "$PWD" > "$SV_SITE/zz-mochi-serving.pth"
export SERVE_PY=/tmp/serve-venv/bin/python3
env -u PYTHONPATH $SERVE_PY -c "import numpy, tritonclient.grpc, pytriton, torch; from transformers import AutoTokenizer, T5EncoderModel; print('serve venv: numpy', numpy.__version__, 'torch', torch.__version__, '+ transformers T5')"
df -h /dev/shm | tail -1
set +e
