"""The gateway's HTTP surface: OpenAI's videos API (as the `openai` package speaks it), events, metrics, page.

Errors are OpenAI-shaped: `{"error": {"message", "type", "param", "code"}}` with 400 naming the field for bad
input, 401 for a missing or wrong API key, 404, 413 for an oversized body, 429 (with Retry-After) when the
queue is full.
"""
from __future__ import annotations

import asyncio
import base64
import hmac
import json
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response, StreamingResponse

from mochi_runtime.validation import GenerationRequest, Limits, RequestError, validate
from .runner import QueueFull, Runner
from .store import VARIANTS, Job, JobStore, new_id

MODEL = "mochi-1-preview"
FPS = 30  # Mochi's frame rate: `seconds` -> frames
MAX_BODY_BYTES = 64 * 1024
PAGE = Path(__file__).with_name("static") / "index.html"


@dataclass(frozen=True)
class Settings:
    data_dir: str
    triton_url: str = "127.0.0.1:8001"
    api_key: str = ""  # empty: no key asked (the gateway listens on loopback by default)
    workers: int = 2
    max_queue: int = 16
    retention_s: int = 86400
    preview_every: int = 4
    default_frames: int = 49
    default_size: str = "848x480"
    default_steps: int = 64
    limits: Limits = Limits()


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers or {}


def frames_for(seconds: float) -> int:
    """Mochi's frame count nearest `seconds` at 30 fps: 6k+1, at least 7."""
    return max(7, 6 * round((seconds * FPS - 1) / 6) + 1)


def parse_request(body: dict[str, Any], s: Settings) -> dict[str, Any]:
    """The create body (JSON or form fields) -> the job's validated request; ApiError(400) naming the field."""
    def number(name: str, cast=float):
        value = body.get(name)
        if value is None or value == "":
            return None
        try:
            return cast(value)
        except (TypeError, ValueError):
            raise ApiError(400, f"{name}: must be a number, got {value!r}", name) from None

    model = body.get("model") or MODEL
    if model != MODEL:
        raise ApiError(400, f"model: this server serves {MODEL!r}, got {model!r}", "model", "model_not_found")
    size = str(body.get("size") or s.default_size)
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise ApiError(400, f"size: must be WIDTHxHEIGHT (e.g. 848x480), got {size!r}", "size") from None
    frames = number("frames", int)
    seconds = number("seconds")
    if seconds is not None and not 0 < seconds < 1e6:
        raise ApiError(400, f"seconds: must be a positive duration, got {body.get('seconds')!r}", "seconds")
    if frames is None:
        frames = frames_for(seconds) if seconds is not None else s.default_frames
    seed, steps, guidance = number("seed", int), number("steps", int), number("guidance")
    req = GenerationRequest(
        body.get("prompt") or "", body.get("negative_prompt") or "", frames, height, width,
        s.default_steps if steps is None else steps,
        GenerationRequest.guidance if guidance is None else guidance,
        secrets.randbelow(2**31) if seed is None else seed, body.get("cache") or GenerationRequest.cache)
    try:
        req = validate(req, s.limits)
    except RequestError as e:
        field = {"height": "size", "width": "size", "num_frames": "seconds" if body.get("frames") is None
                 else "frames"}.get(e.field, e.field)
        raise ApiError(400, str(e) if field == e.field else f"{field}: {e}", field) from None
    return {"prompt": req.prompt, "negative_prompt": req.negative_prompt, "frames": req.num_frames,
            "width": req.width, "height": req.height, "steps": req.steps, "guidance": req.guidance,
            "seed": req.seed, "cache": req.cache}


def job_json(job: Job, runner: Runner) -> dict[str, Any]:
    r = job.request
    out = {"id": job.id, "object": "video", "model": MODEL, "status": job.status, "progress": job.progress,
           "created_at": job.created_at, "completed_at": job.completed_at, "expires_at": job.expires_at,
           "error": job.error, "prompt": r["prompt"], "seconds": f"{r['frames'] / FPS:.2f}".rstrip("0").rstrip("."),
           "size": f"{r['width']}x{r['height']}", "remixed_from_video_id": None,
           # extensions: Mochi's own knobs, and what the step cache skipped
           "frames": r["frames"], "steps": r["steps"], "guidance": r["guidance"], "seed": r["seed"],
           "negative_prompt": r["negative_prompt"], "cache": r["cache"], "steps_skipped": job.steps_skipped}
    live = runner.live.get(job.id)
    if live is not None and job.status == "in_progress":
        out["step"], out["preview_step"] = live.step, live.preview_step
    return out


def create_app(s: Settings) -> FastAPI:
    store = JobStore(s.data_dir)
    runner = Runner(store, s.triton_url, s.workers, s.max_queue, s.retention_s, preview_every=s.preview_every)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.start()  # the job workers live as long as the server
        try:
            yield
        finally:
            runner.stop()

    app = FastAPI(title="Mochi-1 video jobs", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.store, app.state.runner, app.state.settings = store, runner, s

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"error": {"message": e.message, "type": e.kind, "param": e.param, "code": e.code}},
                            status_code=e.status, headers=e.headers)

    @app.middleware("http")
    async def _guard(request: Request, call_next):
        """The API key on every path (the page too; /healthz excepted), and the body size bound."""
        if s.api_key and request.url.path != "/healthz":
            given = request.headers.get("authorization", "")
            token = given[7:] if given.lower().startswith("bearer ") else request.query_params.get("key", "")
            if not hmac.compare_digest(token.encode(), s.api_key.encode()):
                return JSONResponse({"error": {"message": "missing or wrong API key (Authorization: Bearer ...)",
                                               "type": "invalid_request_error", "param": None,
                                               "code": "invalid_api_key"}}, status_code=401)
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            return JSONResponse({"error": {"message": f"request body over {MAX_BODY_BYTES} bytes",
                                           "type": "invalid_request_error", "param": None, "code": None}},
                                status_code=413)
        return await call_next(request)

    def find(video_id: str) -> Job:
        job = store.get(video_id)
        if job is None:
            raise ApiError(404, f"no video with id {video_id!r}", "video_id", "not_found")
        return job

    @app.get("/healthz")
    def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 1729555200,
                                            "owned_by": "genmo"}]}

    @app.post("/v1/videos")
    async def create(request: Request) -> JSONResponse:
        kind = request.headers.get("content-type", "")
        try:
            if kind.startswith("multipart/form-data") or kind.startswith("application/x-www-form-urlencoded"):
                body = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
            else:
                body = json.loads(await request.body() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "the body must be JSON or a form", None) from None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object", None)
        job = Job(new_id(), parse_request(body, s))
        try:
            runner.submit(job)
        except QueueFull as e:
            raise ApiError(429, str(e), None, "queue_full", "rate_limit_error", {"Retry-After": "30"}) from None
        return JSONResponse(job_json(store.get(job.id) or job, runner))

    @app.get("/v1/videos")
    def list_videos(after: str | None = None, limit: int = 20, order: str = "desc") -> dict:
        if not 1 <= limit <= 100:
            raise ApiError(400, f"limit: must be between 1 and 100, got {limit}", "limit")
        if order not in ("asc", "desc"):
            raise ApiError(400, f"order: must be asc or desc, got {order!r}", "order")
        jobs, more = store.page(after, limit, order == "desc")
        data = [job_json(j, runner) for j in jobs]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": more}

    @app.get("/v1/videos/{video_id}")
    def retrieve(video_id: str) -> dict:
        return job_json(find(video_id), runner)

    @app.delete("/v1/videos/{video_id}")
    def delete(video_id: str) -> dict:
        find(video_id)
        runner.cancel(video_id)  # a running job stops at the DiT's next step
        store.delete(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/videos/{video_id}/content")
    def content(video_id: str, variant: str = "video") -> Response:
        if variant not in VARIANTS:
            raise ApiError(400, f"variant: must be one of {', '.join(VARIANTS)}, got {variant!r}", "variant")
        job = find(video_id)
        path = store.path(job.id, variant)
        if job.status != "completed" or not path.exists():
            raise ApiError(404, f"video {video_id} has no {variant} ({job.status})", "video_id", "not_ready")
        return FileResponse(path, media_type=VARIANTS[variant][1])

    @app.get("/v1/videos/{video_id}/events")
    async def events(video_id: str) -> StreamingResponse:
        find(video_id)

        async def stream():
            sent_step, sent_preview = -1, -1
            while True:
                job = store.get(video_id)
                if job is None:
                    yield f"event: failed\ndata: {json.dumps({'id': video_id, 'error': 'deleted'})}\n\n"
                    return
                state = job_json(job, runner)
                live = runner.live.get(video_id)
                step = live.step if live else -1
                if live is not None and live.preview_png is not None and live.preview_step != sent_preview:
                    sent_preview = live.preview_step
                    image = "data:image/png;base64," + base64.b64encode(live.preview_png).decode()
                    data = json.dumps({"id": video_id, "step": sent_preview, "image": image})
                    yield f"event: preview\ndata: {data}\n\n"
                if step != sent_step or job.status in ("completed", "failed"):
                    sent_step = step
                    name = job.status if job.status in ("completed", "failed") else "progress"
                    yield f"event: {name}\ndata: {json.dumps(state)}\n\n"
                    if name != "progress":
                        return
                await asyncio.sleep(0.2)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/metrics")
    def metrics() -> PlainTextResponse:
        return PlainTextResponse(runner.metrics(), media_type="text/plain; version=0.0.4")

    @app.get("/")
    def page() -> Response:
        if not PAGE.exists():
            return PlainTextResponse("the page is not built in this version", status_code=404)
        return FileResponse(PAGE, media_type="text/html")

    app.state.started = time.time()
    return app
