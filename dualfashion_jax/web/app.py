"""The FastAPI app of `dualfashion-jax serve`: JSON endpoints over one `SessionEngine` plus the static page.

The engine (one model load) is shared by every request; rounds from FastAPI's worker threads go through a
`RoundBatcher`: the rounds of different sessions that arrive within a short window run as one batch on the jitted
sampler (`SessionEngine.round_many`), while `ProgressBoard` tells the page how far each round is. Client mistakes get a 4xx whose `detail` says what was wrong: unknown user / session / item (404), malformed
feedback or profile (400), a batch above `max_candidates` (413), invalid JSON (400) or fields (422), and a second
round on a session whose round is still running (409).
"""
from __future__ import annotations

import contextlib
import pathlib

import fastapi
from fastapi import exceptions as fastapi_exceptions
from fastapi import responses, staticfiles

from dualfashion_jax.data.synthetic import appearance as appearance_lib
from dualfashion_jax.sessions.engine import FeedbackError, SessionEngine, UnknownUserError
from dualfashion_jax.text.tokenizer import CAPTION_KEYS
from dualfashion_jax.web import payloads
from dualfashion_jax.web.batcher import RoundBatcher
from dualfashion_jax.web.progress import ProgressBoard, RoundBusyError

STATIC = pathlib.Path(__file__).resolve().parent / "static"


def _message(err: Exception, what: str) -> str:
    """The engine's own message, prefixed with `what` unless it already names it."""
    msg = str(err.args[0]) if err.args else type(err).__name__
    return msg if msg.lower().startswith(what.split(":")[0]) else f"{what} {msg}"


@contextlib.contextmanager
def _not_found(what: str):
    """KeyError inside -> 404 naming `what` (the engine signals unknown ids with KeyError subclasses)."""
    try:
        yield
    except KeyError as err:
        raise fastapi.HTTPException(404, _message(err, f"unknown {what}:")) from err


def create_app(engine: SessionEngine, batch_window_s: float = 0.05, batch_rounds: int = 8) -> fastapi.FastAPI:
    """The app over `engine` (its `max_candidates` caps the candidates of one round); rounds arriving within
    `batch_window_s` of each other (at most `batch_rounds`) sample as one batch."""
    max_candidates = engine.max_candidates
    app = fastapi.FastAPI(title="DualFashion sessions", docs_url="/api/docs", openapi_url="/api/openapi.json")
    board = ProgressBoard()
    app.state.batcher = batcher = RoundBatcher(engine, batch_window_s, batch_rounds)

    @app.exception_handler(fastapi_exceptions.RequestValidationError)
    async def _invalid_request(request: fastapi.Request, exc: fastapi_exceptions.RequestValidationError):
        errors = list(exc.errors())
        status = 400 if any(e.get("type") == "json_invalid" for e in errors) else 422
        return responses.JSONResponse({"detail": payloads.validation_message(errors)}, status_code=status)

    @app.get("/", include_in_schema=False)
    def index() -> responses.FileResponse:
        return responses.FileResponse(STATIC / "index.html")

    app.mount("/static", staticfiles.StaticFiles(directory=STATIC), name="static")

    @app.get("/api/health")
    def health() -> dict:
        return {"ok": True, "max_candidates": max_candidates, "tasks": list(payloads.TASKS)}

    @app.get("/api/vocabulary")
    def vocabulary() -> dict:
        return {"preference_keys": list(CAPTION_KEYS),
                "appearance": {k: list(v) for k, v in appearance_lib.VOCAB.items()}}

    @app.get("/api/users")
    def users() -> list[dict]:
        return engine.users()

    @app.post("/api/users", status_code=201)
    def create_user(body: payloads.NewUser) -> dict:
        try:
            return {"id": engine.create_user(body.profile)}
        except ValueError as err:
            raise fastapi.HTTPException(400, _message(err, "profile:")) from err

    @app.get("/api/users/{user_id}/outfits")
    def outfits(user_id: str, limit: int = fastapi.Query(20, ge=1, le=200)) -> list[dict]:
        with _not_found("user"):
            return engine.outfits(user_id, limit=limit)

    @app.get("/api/items/{item_id}.png")
    def item_image(item_id: str) -> responses.Response:
        with _not_found("catalogue item"):
            png = engine.item_image(item_id)
        return responses.Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/api/sessions")
    def sessions(user_id: str | None = None) -> list[dict]:
        with _not_found("user"):
            return engine.sessions(user_id)

    @app.post("/api/sessions", status_code=201)
    def start(body: payloads.NewSession) -> dict:
        try:
            session = engine.start(body.user_id, body.task, body.outfit_id)
        except UnknownUserError as err:
            raise fastapi.HTTPException(404, _message(err, "unknown user:")) from err
        except KeyError as err:
            raise fastapi.HTTPException(404, _message(err, "unknown outfit:")) from err
        except ValueError as err:
            raise fastapi.HTTPException(400, str(err)) from err
        return payloads.session_json(session)

    def _session(session_id: str):
        with _not_found("session"):
            return engine.session(session_id)

    @app.get("/api/sessions/{session_id}")
    def session(session_id: str) -> dict:
        return payloads.session_json(_session(session_id))

    @app.get("/api/sessions/{session_id}/progress")
    def progress(session_id: str) -> dict:
        entry = board.get(session_id)
        if entry["state"] == "idle":
            _session(session_id)  # 404 for an unknown id
        return entry

    @app.post("/api/sessions/{session_id}/rounds")
    def round_(session_id: str, body: payloads.NewRound) -> dict:
        if body.n > max_candidates:
            raise fastapi.HTTPException(413, f"n: {body.n} candidates requested, at most {max_candidates} per round")
        _session(session_id)
        try:
            board.begin(session_id, body.n)
        except RoundBusyError as err:
            raise fastapi.HTTPException(409, str(err)) from err
        error = None
        try:
            rnd = batcher.submit(session_id, body.feedback, body.n,
                                 on_progress=lambda done, total: board.update(session_id, done, total))
        except FeedbackError as err:
            error = f"feedback: {err}"
            raise fastapi.HTTPException(400, error) from err
        except Exception as err:
            error = f"{type(err).__name__}: {err}"
            raise
        finally:
            board.finish(session_id, error)
        return payloads.round_json(rnd)

    return app
