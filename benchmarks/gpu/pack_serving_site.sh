#!/usr/bin/env bash
# Pack what a GPU machine (Python 3.12, no network) needs to run tritonserver and the client into
# .gpu/site.tar.xz (< 64 MiB with the rest of what travels). Run from the repo root after `make .venv`.
set -euo pipefail
V=$(.venv/bin/python -c "import site; print(site.getsitepackages()[0])")
W=$(mktemp -d); S=$W/site
mkdir -p "$S"/pytriton/tritonserver/{bin,backends/python,python_backend_stubs/3.12,caches/local} "$S"/nvidia_pytriton.libs
touch "$S"/pytriton/__init__.py   # only its location matters: the supervisor finds tritonserver/ beside it
cp "$V"/pytriton/tritonserver/bin/tritonserver "$S"/pytriton/tritonserver/bin/
cp "$V"/pytriton/tritonserver/backends/python/{libtriton_python.so,triton_python_backend_utils.py} "$S"/pytriton/tritonserver/backends/python/
cp "$V"/pytriton/tritonserver/python_backend_stubs/3.12/triton_python_backend_stub "$S"/pytriton/tritonserver/python_backend_stubs/3.12/
cp "$V"/pytriton/tritonserver/caches/local/libtritoncache_local.so "$S"/pytriton/tritonserver/caches/local/
cp "$V"/nvidia_pytriton.libs/* "$S"/nvidia_pytriton.libs/
rm -f "$S"/nvidia_pytriton.libs/libpython3-*.13.so*   # only the 3.13 stub links it
cp -r "$V"/tritonclient "$S"/ && find "$S"/tritonclient -name __pycache__ -prune -exec rm -rf {} +
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$W/wheels" \
  numpy==1.26.4 grpcio==1.85.3 protobuf==4.25.9 python-rapidjson==1.25
for w in "$W"/wheels/*.whl; do (cd "$S" && unzip -q -o "$w"); done
rm -rf "$S"/numpy/*/tests "$S"/numpy/tests
mkdir -p .gpu && tar -cJf .gpu/site.tar.xz -C "$W" site && rm -rf "$W"
ls -la .gpu/site.tar.xz
