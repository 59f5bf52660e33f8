"""The jobs gateway (`python -m gateway`) as its own process in front of a real tritonserver on the embedded
tiny model, driven by the unmodified `openai` package (pinned in requirements.txt)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import openai
import pytest

from client import MochiClient
from mochi_runtime.parallel.topology import free_port
from mochi_runtime.video import probe_mp4
from triton_helpers import metric, running_server

# the package warns that OpenAI's own video service closes; its API shape is what the gateway serves
pytestmark = pytest.mark.filterwarnings("ignore:The Sora API:DeprecationWarning")

KEY = "test-key-" + os.urandom(8).hex()
SMALL = {"frames": 13, "steps": 3}  # extra body fields: Mochi's own knobs
SIZE = "80x48"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_server(tmp_path_factory.mktemp("triton")) as srv:
        yield srv


@contextmanager
def gateway(server, data_dir: Path, *args: str):
    """The gateway process on a free port, against `server`; killed (SIGKILL) after the block."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "--port", str(port), "--triton", server.grpc_url,
                             "--data-dir", str(data_dir), "--api-key", KEY, "--default-frames", "13",
                             "--default-size", SIZE, "--default-steps", "3", "--preview-every", "2", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/healthz", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"gateway did not start: {proc.stdout.read() if proc.stdout else ''}")
                time.sleep(0.2)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


@pytest.fixture(scope="module")
def gw(server, tmp_path_factory):
    with gateway(server, tmp_path_factory.mktemp("gateway"), "--workers", "2", "--max-queue", "6") as (url, _):
        yield url


@pytest.fixture()
def oai(gw):
    return openai.OpenAI(base_url=gw + "/v1", api_key=KEY, max_retries=0, timeout=120)


def wait_done(oai, video_id: str, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        video = oai.videos.retrieve(video_id)
        if video.status in ("completed", "failed"):
            return video
        time.sleep(0.2)
    raise TimeoutError(video_id)


def test_create_retrieve_download_with_the_openai_package(oai, tmp_path):
    job = oai.videos.create(prompt="a red fox in snow", model="mochi-1-preview", size=SIZE,
                            extra_body={**SMALL, "seed": 5})
    assert job.object == "video" and job.status in ("queued", "in_progress") and job.id.startswith("video_")
    done = wait_done(oai, job.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    assert done.size == SIZE and done.expires_at > done.completed_at
    path = tmp_path / "fox.mp4"
    oai.videos.download_content(job.id).write_to_file(path)
    assert probe_mp4(path)[:3] == (13, 48, 80)
    for variant in ("thumbnail", "spritesheet"):
        assert oai.videos.download_content(job.id, variant=variant).content[:8] == b"\x89PNG\r\n\x1a\n"
    # the same request straight to Triton gives the same video
    assert oai.videos.list().data[0].id == job.id
    polled = oai.videos.create_and_poll(prompt="a red fox in snow", size=SIZE, extra_body={**SMALL, "seed": 5},
                                        poll_interval_ms=200)
    assert polled.status == "completed"
    assert oai.videos.download_content(polled.id).content == path.read_bytes()


def test_seconds_become_mochi_frames_and_list_pages(oai):
    ids = [oai.videos.create(prompt=f"clip {i}", seconds="0.4", size=SIZE, extra_body={"steps": 2, "seed": i}).id
           for i in range(3)]
    first = oai.videos.retrieve(ids[0])
    assert first.seconds == "0.43" and first.model_extra["frames"] == 13  # 0.4 s at 30 fps -> 6k+1
    page = oai.videos.list(limit=2)
    assert [v.id for v in page.data] == ids[::-1][:2] and page.has_more
    rest = oai.videos.list(limit=2, after=page.data[-1].id)
    assert rest.data[0].id == ids[0]
    everything = [v.id for v in oai.videos.list(limit=100)]  # the package's auto-pagination
    assert set(ids) <= set(everything)
    for i in ids:
        assert wait_done(oai, i).status == "completed"


def test_deleting_a_running_job_stops_the_dit_and_the_next_job_is_right(oai, server):
    cancelled0 = metric(server, "mochi_generations_cancelled_total")
    long = oai.videos.create(prompt="a long one", size=SIZE, extra_body={"frames": 13, "steps": 200, "seed": 1})
    deadline = time.monotonic() + 60
    while oai.videos.retrieve(long.id).status != "in_progress" or oai.videos.retrieve(long.id).progress < 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    gone = oai.videos.delete(long.id)
    assert gone.deleted and gone.id == long.id
    deadline = time.monotonic() + 15
    while metric(server, "mochi_generations_cancelled_total") <= cancelled0:
        assert time.monotonic() < deadline, "the DiT group did not stop"
        time.sleep(0.2)
    with pytest.raises(openai.NotFoundError):
        oai.videos.retrieve(long.id)
    after = oai.videos.create_and_poll(prompt="waves on rocks", size=SIZE, extra_body={**SMALL, "seed": 3},
                                       poll_interval_ms=200)
    with MochiClient(server.grpc_url) as c:
        ref = c.generate("waves on rocks", frames=13, height=48, width=80, steps=3, seed=3)
    assert oai.videos.download_content(after.id).content == ref.mp4


@pytest.mark.parametrize("body,param", [
    ({"model": "sora-2"}, "model"), ({"size": "big"}, "size"), ({"size": "81x48"}, "size"),
    ({"seconds": "-1"}, "seconds"), ({"frames": 8}, "frames"), ({"steps": 0}, "steps"),
    ({"guidance": "lots"}, "guidance"), ({"cache": "sometimes"}, "cache"), ({"prompt": ""}, "prompt"),
])
def test_bad_input_is_an_openai_shaped_400_naming_the_field(oai, body, param):
    fields = {"prompt": "a cat", "size": SIZE, **body}
    with pytest.raises(openai.BadRequestError) as e:
        oai.videos.create(**{k: v for k, v in fields.items() if k in ("prompt", "model", "size", "seconds")},
                          extra_body={k: v for k, v in fields.items() if k not in ("prompt", "model", "size",
                                                                                  "seconds")})
    error = e.value.response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error" and param in error["message"]


def test_a_wrong_or_missing_key_is_401_everywhere(gw):
    for key in ("wrong", None):
        client = openai.OpenAI(base_url=gw + "/v1", api_key=key or "x", max_retries=0)
        if key is None:
            client = client.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError):
            client.videos.list()
    for path in ("/", "/metrics", "/v1/models"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(gw + path, timeout=10)
        assert e.value.code == 401


def _get(url: str, path: str) -> bytes:
    req = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {KEY}"})
    return urllib.request.urlopen(req, timeout=30).read()


def test_events_carry_progress_and_previews_then_metrics_count_them(oai, gw):
    job = oai.videos.create(prompt="a lighthouse", size=SIZE, extra_body={"frames": 13, "steps": 6, "seed": 2})
    events = _get(gw, f"/v1/videos/{job.id}/events").decode()
    kinds = [line[7:] for line in events.splitlines() if line.startswith("event: ")]
    assert kinds[-1] == "completed" and "progress" in kinds and "preview" in kinds
    preview = next(json.loads(line[6:]) for line in events.splitlines()
                   if line.startswith("data: ") and '"image"' in line)
    assert preview["image"].startswith("data:image/png;base64,") and preview["step"] in (2, 4)
    text = _get(gw, "/metrics").decode()
    assert 'mochi_gateway_jobs{status="completed"}' in text and "mochi_gateway_queue_depth" in text
    count = [float(line.split()[-1]) for line in text.splitlines()
             if line.startswith("mochi_gateway_time_to_first_preview_seconds_count")][0]
    assert count >= 1
    models = json.loads(_get(gw, "/v1/models"))
    assert [m["id"] for m in models["data"]] == ["mochi-1-preview"]


def test_a_full_queue_is_429_with_retry_after(oai):
    codes = []
    with ThreadPoolExecutor(8) as pool:
        def create(i):
            try:
                oai.videos.create(prompt=f"flood {i}", size=SIZE, extra_body={"frames": 13, "steps": 2, "seed": i})
                return 200
            except openai.RateLimitError as e:
                assert e.response.headers["retry-after"] and e.response.json()["error"]["code"] == "queue_full"
                return 429
        codes = list(pool.map(create, range(16)))
    assert 429 in codes and 200 in codes


def test_jobs_survive_a_gateway_killed_with_one_running_and_one_queued(server, tmp_path):
    data = tmp_path / "data"
    with gateway(server, data, "--workers", "1") as (url, proc):
        oai = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        running = oai.videos.create(prompt="long", size=SIZE, extra_body={"frames": 13, "steps": 200, "seed": 1})
        queued = oai.videos.create(prompt="short", size=SIZE, extra_body={**SMALL, "seed": 4})
        deadline = time.monotonic() + 60
        while oai.videos.retrieve(running.id).progress < 1:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert oai.videos.retrieve(queued.id).status == "queued"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    with gateway(server, data, "--workers", "1") as (url, _):
        oai = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        failed = oai.videos.retrieve(running.id)
        assert failed.status == "failed" and failed.error.code == "gateway_restarted" and failed.error.message
        assert wait_done(oai, queued.id).status == "completed"
        assert {v.id for v in oai.videos.list()} == {running.id, queued.id}  # nothing else changed


def test_twenty_jobs_at_concurrency_four_all_complete_and_match_their_seeds(server, tmp_path):
    with MochiClient(server.grpc_url) as c:
        refs = {seed: c.generate("a busy street", frames=13, height=48, width=80, steps=2, seed=seed).mp4
                for seed in range(5)}
    with gateway(server, tmp_path / "load", "--workers", "4", "--max-queue", "20") as (url, _):
        oai = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=300)

        def one(i: int) -> tuple[int, str]:
            video = oai.videos.create_and_poll(prompt="a busy street", size=SIZE,
                                               extra_body={"frames": 13, "steps": 2, "seed": i % 5},
                                               poll_interval_ms=200)
            assert video.status == "completed", video.error
            return i % 5, video.id

        with ThreadPoolExecutor(4) as pool:
            done = list(pool.map(one, range(20)))
        for seed, video_id in done:
            assert oai.videos.download_content(video_id).content == refs[seed]
    assert np.unique([s for s, _ in done]).size == 5


ARTIFACTS = Path(__file__).resolve().parents[2] / "out" / "browser"  # screenshots of the page test (gitignored)


def _browser():
    """Headless Chromium through selenium (Debian's chromium + chromium-driver, which `make test` installs where
    it can); None where either is missing."""
    import shutil

    from selenium import webdriver

    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        return None
    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1100,900",
                 "--autoplay-policy=no-user-gesture-required"):
        opts.add_argument(flag)
    return webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=driver))


def test_the_page_in_a_real_browser_shows_progress_a_preview_and_plays_the_video(gw):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser = _browser()
    if browser is None:
        pytest.skip("no Chromium here (apt-get install chromium chromium-driver): the page is not driven")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    try:
        browser.get(f"{gw}/?key={KEY}")
        assert browser.title == "Mochi-1"
        browser.find_element(By.ID, "prompt").send_keys("a red fox running through fresh snow")
        for field, value in (("size", SIZE), ("frames", "13"), ("steps", "12"), ("seed", "7")):
            browser.find_element(By.ID, field).send_keys(value)
        browser.save_screenshot(str(ARTIFACTS / "1_form.png"))
        browser.find_element(By.ID, "go").click()
        wait = WebDriverWait(browser, 120, poll_frequency=0.05)
        wait.until(lambda b: float(b.find_element(By.ID, "bar").get_attribute("value")) > 0)
        wait.until(lambda b: (b.find_element(By.ID, "preview").get_attribute("src") or "").startswith("data:image/png"))
        browser.save_screenshot(str(ARTIFACTS / "2_progress_and_preview.png"))
        wait.until(lambda b: b.execute_script(
            "const v = document.getElementById('player'); return v.readyState >= 2 && v.duration > 0"))
        duration = browser.execute_script("return document.getElementById('player').duration")
        assert abs(duration - 13 / 30) < 0.1, duration  # 13 frames at 30 fps
        assert browser.find_element(By.ID, "download").get_attribute("href").endswith(f"variant=video&key={KEY}")
        assert "Done: 13 frames of 80x48" in browser.find_element(By.ID, "status").text
        browser.save_screenshot(str(ARTIFACTS / "3_video.png"))
        assert "a red fox running" in browser.find_element(By.ID, "recent").text
    finally:
        browser.quit()


def test_finished_videos_expire_and_no_request_reaches_outside_the_data_dir(server, tmp_path):
    data = tmp_path / "short-lived"
    with gateway(server, data, "--retention-s", "1") as (url, _):
        oai = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        video = oai.videos.create_and_poll(prompt="gone soon", size=SIZE, extra_body={**SMALL, "seed": 6},
                                           poll_interval_ms=200)
        assert video.status == "completed" and video.expires_at <= video.completed_at + 1
        deadline = time.monotonic() + 30
        while True:  # the retention sweep removes the job and its files
            try:
                oai.videos.retrieve(video.id)
            except openai.NotFoundError:
                break
            assert time.monotonic() < deadline, "the video did not expire"
            time.sleep(0.5)
        assert not list((data / "videos").iterdir())
        (tmp_path / "secret.txt").write_text("not for clients")
        for path in ("/v1/videos/..%2F..%2Fsecret.txt/content", "/v1/videos/../../secret.txt/content",
                     "/v1/videos/video_%2E%2E/content?variant=../../secret.txt"):
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(url, path)
            assert e.value.code in (400, 404) and b"not for clients" not in e.value.read()
