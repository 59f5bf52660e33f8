# Fresh-machine entry points: `make demo`, `make test`, `make serve`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
TORCH  ?= torch==2.13.0

.PHONY: venv test test-fast demo serve clean-venv browser

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip || true
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

venv: $(STAMP)

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The gateway page's test drives a real headless Chromium: Debian's packages, installed where apt can (root);
# elsewhere that one test skips and says why.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
		{ [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null; } || \
		echo "no chromium: the page test will skip (apt-get install chromium chromium-driver)"

# The inner loop: one-process tests only (no server, no process group, nothing marked slow).
test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit -m "not slow" $(PYTEST_ARGS)

# Real tritonserver on the embedded tiny model, one prompt through the client, mp4 path printed last.
demo: $(STAMP)
	@$(PY) scripts/demo.py

# Server in the foreground on 127.0.0.1 (HTTP 8000, gRPC 8001, metrics 8002; override with
# HTTP_PORT=... GRPC_PORT=... METRICS_PORT=... MODEL_DIR=...), and beside it the jobs gateway on
# 127.0.0.1:8080 (GATEWAY_PORT=...; NO_GATEWAY=1 skips it). Without MODEL_DIR the gateway's defaults are
# the embedded tiny model's (13 frames of 96x64, 8 steps), with one Mochi's (49 frames of 848x480, 64 steps).
HTTP_PORT ?= 8000
GRPC_PORT ?= 8001
METRICS_PORT ?= 8002
GATEWAY_PORT ?= 8080
GATEWAY_DEFAULTS := $(if $(MODEL_DIR),,--default-frames 13 --default-size 96x64 --default-steps 8)
serve: $(STAMP)
	@if [ -z "$(NO_GATEWAY)" ]; then \
		$(PY) -m gateway --port $(GATEWAY_PORT) --triton 127.0.0.1:$(GRPC_PORT) $(GATEWAY_DEFAULTS) & \
		trap "kill $$! 2>/dev/null" EXIT INT TERM; \
	fi; \
	$(PY) -m mochi_runtime.serving.tritonserver --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT) \
		--metrics-port $(METRICS_PORT) $(if $(MODEL_DIR),--model-dir $(MODEL_DIR),)

clean-venv:
	rm -rf $(VENV)
