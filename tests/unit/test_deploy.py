"""The deployment kit (docker/) checked as far as a machine without docker can: files parse, what they copy
exists, the image's Python matches the stub, ports, health paths, metrics and environment overrides agree with
the server and the model repository."""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest
import yaml

from mochi_runtime.serving.metrics import SERIES
from mochi_runtime.serving import adapters as A
from mochi_runtime.serving.tritonserver import READY_PATH, ServerConfig, build_parser

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
# NGC Triton release -> (Triton version, the image's Python = its python-backend stub's Python), from NVIDIA's
# release notes ("Triton Inference Server Release 24.12: Ubuntu 24.04 including Python 3.12").
NGC_RELEASES = {"24.12": ("2.53.0", "3.12")}
SERVER_FLAGS = {"MOCHI_MODEL_DIR", "MOCHI_HOST", "MOCHI_HTTP_PORT", "MOCHI_GRPC_PORT", "MOCHI_METRICS_PORT",
                "MOCHI_ADMIN_KEY", "MOCHI_MAX_RESTARTS"}


def _dockerfile() -> list[tuple[str, str]]:
    """(instruction, arguments) with line continuations joined."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args() -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in _dockerfile() if word == "ARG" and "=" in rest)


def _compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def _k8s(name: str) -> dict:
    return yaml.safe_load((DOCKER / "k8s" / name).read_text())


def _params(model: str) -> set[str]:
    text = (ROOT / "model_repository" / model / "config.pbtxt").read_text()
    return set(re.findall(r'\{\s*key:\s*"([^"]+)"', text))


def test_every_yaml_parses():
    docs = [DOCKER / "compose.yaml", *sorted((DOCKER / "k8s").glob("*.yaml"))]
    assert len(docs) >= 6
    for path in docs:
        assert yaml.safe_load(path.read_text()), path
    rules = yaml.safe_load(_k8s("prometheus-adapter-rules.yaml")["data"]["config.yaml"])
    assert rules["rules"]


def test_dockerfile_copies_only_what_exists_and_builds_on_the_ngc_image():
    steps = _dockerfile()
    copies = [shlex.split(rest) for word, rest in steps if word == "COPY"]
    assert copies
    for parts in copies:
        for src in parts[:-1]:
            assert (ROOT / src).exists(), f"COPY {src}: not in the repository"
    base = next(rest for word, rest in steps if word == "FROM")
    release = _args()["TRITON_RELEASE"]
    assert base == "nvcr.io/nvidia/tritonserver:${TRITON_RELEASE}-py3"
    assert release in NGC_RELEASES, release


def test_image_python_matches_the_stub_and_numpy_stays_below_2():
    triton, python = NGC_RELEASES[_args()["TRITON_RELEASE"]]
    assert _args()["PYTHON_VERSION"] == python  # the NGC python backend's stub is built for this Python
    reqs = (DOCKER / "requirements-gpu.txt").read_text()
    numpy = re.search(r"^numpy==(\d+)\.", reqs, re.M)
    assert numpy and int(numpy.group(1)) < 2
    assert re.search(r"^TORCH_VERSION=\d+\.\d+\.\d+$", f"TORCH_VERSION={_args()['TORCH_VERSION']}")


def test_entrypoint_is_the_supervisor_with_flags_it_accepts():
    entry = json.loads(next(rest for word, rest in _dockerfile() if word == "ENTRYPOINT"))
    assert entry[:3] == ["python3", "-m", "mochi_runtime.serving.tritonserver"]
    a = build_parser().parse_args(entry[3:])
    assert a.host == "0.0.0.0"  # inside a container; the supervisor's own default stays loopback
    assert a.model_repository == "/opt/mochi/model_repository"
    assert any(w == "COPY" and rest.split()[-1] == "model_repository" for w, rest in _dockerfile())
    assert ("ENV", "MOCHI_MODEL_DIR=/models/mochi") in _dockerfile()


def test_ports_agree_everywhere():
    cfg = ServerConfig()
    ports = {"http": cfg.http_port, "grpc": cfg.grpc_port, "metrics": cfg.metrics_port}
    assert ports == {"http": 8000, "grpc": 8001, "metrics": 8002}
    expose = next(rest for word, rest in _dockerfile() if word == "EXPOSE").split()
    assert sorted(int(p) for p in expose) == sorted([*ports.values(), GATEWAY_PORT])
    compose = _compose()["services"]["mochi"]
    assert sorted(p.split(":") for p in compose["ports"]) == sorted([str(v), str(v)] for v in ports.values())
    container = _k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == ports
    service = {p["name"]: (p["port"], p["targetPort"]) for p in _k8s("service.yaml")["spec"]["ports"]}
    assert service == {name: (port, name) for name, port in {**ports, "gateway": GATEWAY_PORT}.items()}
    monitor = _k8s("servicemonitor.yaml")["spec"]["endpoints"][0]
    assert monitor["port"] == "metrics" and monitor["path"] == "/metrics"


GATEWAY_PORT = 8080


def test_the_gateway_runs_beside_the_server_on_its_port_with_its_health_check():
    """make serve, compose and k8s run the same `python -m gateway` on 8080, pointed at the server's gRPC port,
    health-checked on /healthz (the one path without the API key)."""
    from gateway.__main__ import main  # noqa: F401 - importable without torch

    assert f"GATEWAY_PORT ?= {GATEWAY_PORT}" in (ROOT / "Makefile").read_text()
    gw = _compose()["services"]["gateway"]
    assert gw["ports"] == [f"{GATEWAY_PORT}:{GATEWAY_PORT}"] and "mochi:8001" in gw["entrypoint"]
    assert "/healthz" in " ".join(gw["healthcheck"]["test"]) and gw["image"] == _compose()["services"]["mochi"]["image"]
    container = next(c for c in _k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"]
                     if c["name"] == "gateway")
    assert container["command"][:3] == ["python3", "-m", "gateway"] and "127.0.0.1:8001" in container["command"]
    assert container["ports"] == [{"name": "gateway", "containerPort": GATEWAY_PORT}]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "gateway"}
    copied = [rest.split()[0] for word, rest in _dockerfile() if word == "COPY"]
    assert "gateway" in copied


def test_health_checks_ask_the_ready_path():
    assert READY_PATH == "/v2/health/ready"
    healthcheck = next(rest for word, rest in _dockerfile() if word == "HEALTHCHECK")
    assert f"127.0.0.1:8000{READY_PATH}" in healthcheck
    assert f"127.0.0.1:8000{READY_PATH}" in " ".join(_compose()["services"]["mochi"]["healthcheck"]["test"])
    container = _k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": READY_PATH, "port": "http"}
    assert container["startupProbe"]["httpGet"]["path"] == READY_PATH
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    # A dead server (the entry point exits with its status) comes back: compose restarts it (k8s does by default)
    assert _compose()["services"]["mochi"]["restart"] in ("always", "unless-stopped", "on-failure")
    assert _k8s("deployment.yaml")["spec"]["template"]["spec"].get("restartPolicy", "Always") == "Always"


def test_gpu_reservation_shm_and_checkpoint_mount():
    compose = _compose()["services"]["mochi"]
    devices = compose["deploy"]["resources"]["reservations"]["devices"][0]
    gpus = compose["environment"]["MOCHI_MOCHI_DIT_GPUS"].split(",")
    assert devices["driver"] == "nvidia" and devices["count"] == len(gpus) and "gpu" in devices["capabilities"]
    env = compose["environment"]
    world = (2 if env["MOCHI_MOCHI_DIT_CFG_PARALLEL"] == "true" else 1) * int(env["MOCHI_MOCHI_DIT_ULYSSES"]) \
        * int(env.get("MOCHI_MOCHI_DIT_RING", "1"))
    assert world == len(gpus)  # the layout fills exactly the reserved GPUs
    assert compose["shm_size"] and compose["volumes"][0].endswith(":/models/mochi:ro")
    spec = _k8s("deployment.yaml")["spec"]["template"]["spec"]
    container = spec["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == len(gpus)
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts == {"checkpoint": "/models/mochi", "dshm": "/dev/shm"}
    assert {v["name"]: v for v in spec["volumes"]}["dshm"]["emptyDir"]["medium"] == "Memory"


def _env_overrides() -> dict[str, str]:
    env = dict(_compose()["services"]["mochi"]["environment"])
    container = _k8s("deployment.yaml")["spec"]["template"]["spec"]["containers"][0]
    env.update({e["name"]: e["value"] for e in container["env"]})
    return env


def test_every_environment_override_names_a_real_parameter():
    models = [p.name for p in (ROOT / "model_repository").iterdir() if (p / "config.pbtxt").is_file()]
    known = {A.param_env_name(m, key): (m, key) for m in models for key in _params(m)}
    for name in _env_overrides():
        if name in SERVER_FLAGS:
            continue
        assert name in known, f"{name} overrides no parameter of {sorted(models)}"


def test_environment_overrides_config_parameters():
    config = {"name": "mochi_dit", "parameters": {"gpus": {"string_value": ""}, "ulysses": {"string_value": "2"}}}
    args = {"model_config": json.dumps(config)}
    env = {"MOCHI_MOCHI_DIT_GPUS": "0,1,2,3", "MOCHI_MOCHI_DIT_UNKNOWN": "x"}
    assert A.model_params(args, env) == {"gpus": "0,1,2,3", "ulysses": "2"}  # unknown keys are not invented
    assert A.model_params(args, {}) == {"gpus": "", "ulysses": "2"}


def test_yes_no_parameters_read_one_way():
    p = {"a": "True", "b": "yes", "c": "1", "d": "false", "e": "no", "f": ""}
    assert [A.flag(p, k) for k in "abcdef"] == [True, True, True, False, False, False]
    assert A.flag(p, "f", default=True) and A.flag(p, "absent", default=True) and not A.flag(p, "absent")
    assert [A.switch({"k": v}, "k") for v in ("", "auto", "AUTO", "on", "off")] == [None, None, None, True, False]
    for bad in ("ture", "maybe"):  # a typo names the parameter instead of quietly meaning "off"
        with pytest.raises(ValueError, match="'k' .*must be true or false"):
            A.flag({"k": bad}, "k")


def test_autoscaler_uses_a_series_the_model_exports():
    hpa = _k8s("hpa.yaml")["spec"]
    assert hpa["scaleTargetRef"]["name"] == _k8s("deployment.yaml")["metadata"]["name"]
    metric = hpa["metrics"][0]["pods"]["metric"]["name"]
    rule = yaml.safe_load(_k8s("prometheus-adapter-rules.yaml")["data"]["config.yaml"])["rules"][0]
    assert rule["name"]["as"] == metric
    series = re.findall(r"(mochi_[a-z_]+?)_(?:sum|count)\b", rule["metricsQuery"])
    exported = {name for _, name, *_ in SERIES["mochi_dit"].values()}
    assert series and set(series) <= exported, (series, exported)


@pytest.mark.parametrize("model", ["mochi_dit", "t5_encoder", "vae_decoder"])
def test_overridden_parameters_parse(model):
    """Values the kit sets are ones the adapters accept (ints are ints, booleans are spelled as they read)."""
    for name, value in _env_overrides().items():
        if name.startswith(f"MOCHI_{model.upper()}_"):
            key = name[len(f"MOCHI_{model.upper()}_"):].lower()
            if key.endswith(("bytes", "ulysses", "ring")):
                assert int(value) > 0, name
            if key in ("cfg_parallel", "offload", "encode_mp4", "compile"):
                A.switch({key: value}, key)  # raises on anything the adapters would refuse
            if key == "weights":
                assert value in ("replicated", "sharded", "auto"), name


def test_server_refuses_to_start_its_stubs_under_numpy_2():
    from mochi_runtime.serving.tritonserver import ServerError, check_stub_numpy

    check_stub_numpy("1.26.4")
    with pytest.raises(ServerError, match="numpy < 2"):
        check_stub_numpy("2.5.2")
    check_stub_numpy()  # this environment (the one make test builds) is servable
