"""llm-dit studio: an HTTP API and a local web page over one process that keeps the models warm.

`create_app(config, workspace, token)` is the FastAPI app `llm-dit studio` serves with uvicorn. It is a surface like
the CLI, over the same API: a generate request is `tasks.generate_file` on the studio's one warm `Generator` (its
`Components`, with `models.low_memory` staging, and the same tensor cache as the CLI), extraction is
`tasks.extract_file`, inspection `tasks.inspect_image`, a sweep `experiment.run_experiment`. The settings a request
may carry are the rows of the CLI's option table (`options.OPTIONS`) that `llm-dit generate` takes, named by their
config keys (`vl.alpha`), so a setting has one name in the config, the CLI's errors, the API, records and the page.

Model work runs one job at a time on a single worker thread (`Studio`); other requests queue. Each job reports the
VL and text forward passes it ran (`Components.forward_passes`, the counter sweeps and `llm-dit bench` report): a
re-render of an image whose reference and prompt were seen before, with another alpha or blend or an extracted layer,
runs none (the cache holds the rows). A generate job streams its denoising steps as server-sent events.

The request bodies are in `studio.requests`, the worker (`Studio`, `Job`, the studio's errors) in
`studio.jobs`; this module is the app: its routes, access rules and error responses.

Every file the client names is a path inside the workspace (`Studio.inside`: absolute paths, `..`, and symlinks out
are refused); uploads are size-limited and opened with the CLI's image guards (`files.load_image`); outputs and the
history are written atomically (`files`), and durably except drafts (the page's live re-renders) until they are
pinned (`studio.jobs`). Errors are JSON `{"error": "one line"}` with a 4xx status.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ..config.settings import Config
from ..core.cache import TensorCache
from ..core.errors import UserError
from ..maths.blend import ALPHA_MAX, ALPHA_VALUES
from ..sweep.spec import PRESETS
from .jobs import Conflict, Job, NotFound, Refused, Studio, UploadTooLarge
from .requests import (
    ExtractRequest,
    GenerateRequest,
    InspectRequest,
    SweepRequest,
    input_options,
    option_info,
    setting_options,
)

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


MAX_UPLOAD_MB = 20.0


TOKEN_COOKIE = "llm_dit_token"


PAGE_FILES = {"": ("studio.html", "text/html"), "studio.js": ("studio.js", "text/javascript"),
              "studio.css": ("studio.css", "text/css")}  # fmt: skip


PAGE_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; frame-src 'self'; object-src 'none'"


STATUS = {Refused: 403, NotFound: 404, Conflict: 409, UploadTooLarge: 413}
"""The HTTP status of each studio error; any other `UserError` is 400."""


def check_bind(host: str, token: str | None) -> None:
    """Binding an address other than the loopback needs a token (everyone who can reach it could use it)."""
    if host not in LOCAL_HOSTS and not token:
        raise UserError(
            f"binding {host} serves the studio beyond this machine: give it a token (--token or LLM_DIT_STUDIO_TOKEN)"
        )


def create_app(
    config: Config,
    workspace: str | Path,
    token: str | None = None,
    *,
    max_upload_mb: float = MAX_UPLOAD_MB,
    cache: TensorCache | None = None,
) -> FastAPI:
    """The studio app over `config` (the models it keeps warm and the default of every setting) and the
    `workspace` folder (inputs the client names, uploads, outputs, sweeps). With `token`, every request must carry
    it: header `Authorization: Bearer TOKEN` or `X-Token`, query `?token=` (the page; it sets a cookie so the
    page's own requests carry it) or that cookie. `cache`: the tensor cache (default: the CLI's, under
    `$LLM_DIT_CACHE`). Without a token only loopback Host names are served (`LOCAL_HOSTS`; others get 400)."""
    studio = Studio(config, workspace, cache)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI):
        yield
        studio.close()

    app = FastAPI(
        title="llm-dit studio",
        version="1",
        summary="Reference-conditioned Z-Image, models kept warm.",
        lifespan=lifespan,
    )
    app.state.studio = studio
    limit = int(max_upload_mb * 2**20)
    if token is None:  # loopback only: refuse other Host names, so a web page cannot reach it by DNS rebinding
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=[*LOCAL_HOSTS, "[::1]"])

    @app.exception_handler(UserError)
    async def user_error(_: Request, e: UserError) -> JSONResponse:
        return JSONResponse({"error": str(e)}, status_code=STATUS.get(type(e), 400))

    @app.exception_handler(RequestValidationError)
    async def bad_request(_: Request, e: RequestValidationError) -> JSONResponse:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"] if p != "body")
        return JSONResponse({"error": f"bad request: '{where}': {err['msg']}"}, status_code=422)

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail).lower()}, status_code=e.status_code, headers=e.headers)

    @app.middleware("http")
    async def authorize(request: Request, call_next):
        if token is None:
            return await call_next(request)
        header = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        given = [header, request.headers.get("x-token", ""), request.query_params.get("token", ""),
                 request.cookies.get(TOKEN_COOKIE, "")]  # fmt: skip
        if not any(hmac.compare_digest(g.encode(), token.encode()) for g in given if g):
            return JSONResponse({"error": "missing or wrong token"}, status_code=401)
        response = await call_next(request)
        if request.query_params.get("token"):
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        return response

    # the page
    def page_file(name: str) -> Response:
        file, media = PAGE_FILES[name]
        body = (resources.files("llm_dit.studio") / "static" / file).read_bytes()
        return Response(
            body, media_type=media, headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-store"}
        )

    @app.get("/", include_in_schema=False)
    def page() -> Response:
        return page_file("")

    @app.get("/studio.js", include_in_schema=False)
    def page_js() -> Response:
        return page_file("studio.js")

    @app.get("/studio.css", include_in_schema=False)
    def page_css() -> Response:
        return page_file("studio.css")

    # the API
    @app.get("/api/options", summary="The settings a request may carry (the CLI's option table), with defaults")
    def options() -> dict[str, Any]:
        return {
            "settings": [option_info(o, config) for o in setting_options()],
            "inputs": [{"key": o.key, "flags": list(o.flags), "help": o.help} for o in input_options()],
            "alpha_max": {"default": 1.0, **ALPHA_MAX},
            "alpha_values": {k: list(v) for k, v in ALPHA_VALUES.items()},
            "presets": list(PRESETS),
            "token_required": token is not None,
        }

    @app.post("/api/uploads", summary="Upload a reference image (PNG, JPEG, WebP) into uploads/")
    async def upload(file: UploadFile) -> dict[str, Any]:
        return await studio.upload(file, limit)

    @app.get("/api/files", summary="Workspace images or sweep reports")
    def files(kind: Literal["images", "reports"] = "images") -> dict[str, list[str]]:
        return {"files": studio.files(kind)}

    @app.get("/files/{path:path}", summary="A workspace file (images, records, reports)")
    def workspace_file(path: str) -> FileResponse:
        return FileResponse(studio.existing(path, "path"))

    queued = {  # path: (Studio method, request model, summary)
        "generate": (studio.generate, GenerateRequest, "Queue one image (PNG + record in outputs/)"),
        "extract": (studio.extract, ExtractRequest, "Queue a VL extraction (fills the cache; file in extractions/)"),
        "inspect": (studio.inspect, InspectRequest, "Queue `llm-dit inspect` of an image and prompt"),
        "sweeps": (studio.sweep, SweepRequest, "Queue a sweep with metrics, grid and report (sweeps/NAME)"),
    }
    for path, (submit, model, summary) in queued.items():
        app.add_api_route(f"/api/{path}", job_route(submit, model), methods=["POST"], status_code=202, summary=summary)

    @app.get("/api/jobs", summary="Every job of this session")
    def jobs() -> list[dict[str, Any]]:
        return [j.as_dict() for j in studio.jobs.values()]

    @app.get("/api/jobs/{job_id}", summary="One job: status, result, error, forward passes")
    def job(job_id: str) -> dict[str, Any]:
        return studio.job(job_id).as_dict()

    @app.get("/api/jobs/{job_id}/events", summary="Server-sent events: queued, running, step, done/failed/cancelled")
    def events(job_id: str) -> StreamingResponse:
        return StreamingResponse(studio.events(studio.job(job_id)), media_type="text/event-stream")

    @app.post("/api/jobs/{job_id}/cancel", summary="Cancel a queued job or stop a running generate job")
    def cancel(job_id: str) -> dict[str, Any]:
        return studio.cancel(job_id).as_dict()

    @app.post("/api/jobs/{job_id}/pin", summary="Pin a generate job's image: make it (a draft) durable")
    def pin(job_id: str) -> dict[str, Any]:
        return studio.pin(job_id).as_dict()

    @app.get("/api/jobs/{job_id}/image", summary="The PNG a generate job made")
    def job_image(job_id: str) -> Response:
        path = studio.existing(output_of(studio.job(job_id), "image"), "image")
        return Response(path.read_bytes(), media_type="image/png")  # one read: FileResponse streams it in chunks

    @app.get("/api/jobs/{job_id}/record", summary="The record (JSON sidecar) of a generate job's image")
    def job_record(job_id: str) -> FileResponse:
        path = studio.existing(output_of(studio.job(job_id), "record"), "record")
        return FileResponse(path, media_type="application/json")

    @app.get("/api/history", summary="Finished jobs, oldest first (kept in .studio/history.json)")
    def history() -> list[dict[str, Any]]:
        return studio.history

    @app.get("/api/components", summary="Which models are loaded, forward passes so far, the tensor cache")
    def components() -> dict[str, Any]:
        return studio.components()

    @app.post("/api/components/release", summary="Release every loaded model (refused while a job runs)")
    def release() -> dict[str, Any]:
        return studio.release()

    return app


def serve(
    config: Config,
    workspace: str | Path,
    host: str = "127.0.0.1",
    port: int = 7860,
    token: str | None = None,
    say: Callable[[str], None] = print,
) -> None:
    """Run the studio with uvicorn until interrupted (`llm-dit studio`)."""
    import uvicorn

    check_bind(host, token)
    app = create_app(config, workspace, token)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    shown = f"[{host}]" if ":" in host else host
    say(
        f"llm-dit studio on http://{shown}:{port}/{'?token=…' if token else ''} (workspace {Path(workspace).resolve()})"
    )
    server.run()


def job_route(submit: Callable[[Any], Job], model: type[BaseModel]) -> Callable[..., dict[str, Any]]:
    """An endpoint that validates a `model` body and queues its job (`submit`), answering with the job."""

    def route(req: Any) -> dict[str, Any]:
        return submit(req).as_dict()

    route.__annotations__ = {"req": model, "return": dict[str, Any]}
    route.__name__ = submit.__name__
    return route


def output_of(job: Job, what: str) -> str:
    if job.kind != "generate":
        raise UserError(f"job '{job.id}' is a {job.kind} job, not generate")
    if job.status != "done" or not job.result:
        raise Conflict(f"job '{job.id}' is {job.status}: it has no {what}")
    return job.result[what]
