"""Domain errors raised below the routes, and the one place that maps them to HTTP answers."""

import logging
from collections.abc import Sequence
from typing import Any, ClassVar, Self

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from app.logs import Throttled

log = logging.getLogger("app")
refusals = Throttled(log)  # a storm of 503s is a few lines, not thousands


class ServiceError(Exception):
    """An error with an HTTP status and a message that is safe to show the client."""

    status_code: ClassVar[int] = 500
    headers: ClassVar[dict[str, str] | None] = None

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def in_file(self, index: int, filename: str | None) -> Self:
        """The same error, its message naming which upload of a batch it is about."""
        return self.about(f"files[{index}] ({filename or 'no filename'})")

    def about(self, subject: str) -> Self:
        """The same error (class, status, every attribute), its message saying what it is about."""
        named = type(self).__new__(type(self))  # not __init__: subclasses take other arguments
        named.__dict__.update(vars(self))
        named.detail = f"{subject}: {self.detail}"
        named.args = (named.detail,)
        return named

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail}

    def answer_headers(self) -> dict[str, str] | None:
        """The answer's headers: the class's, unless an error works them out."""
        return self.headers


class BadRequest(ServiceError):
    status_code = 400


class MissingField(ServiceError):
    status_code = 422


class UnsupportedMediaType(ServiceError):
    status_code = 415


class PayloadTooLarge(ServiceError):
    status_code = 413
    # The rest of an over-long body was not read: the connection cannot be reused.
    headers: ClassVar[dict[str, str] | None] = {"Connection": "close"}


class RequestTimeout(ServiceError):
    """The body did not arrive in time: the rest is not read, so the connection cannot be reused."""

    status_code = 408
    headers: ClassVar[dict[str, str] | None] = {"Connection": "close"}


class UploadsBusy(ServiceError):
    """This process is already receiving as many upload bytes as it may hold; the rest of this
    body is not read, so the connection cannot be reused."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1", "Connection": "close"}


class ClientBusy(ServiceError):
    """This client (address) already holds its share of what the server takes at once; the rest
    of this body (if any) is not read, so the connection cannot be reused."""

    status_code = 429
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1", "Connection": "close"}


class FileTooLarge(ServiceError):
    """One file over the limit, in a body that was read whole."""

    status_code = 413


class ImageTooLarge(ServiceError):
    """Too many pixels once decoded: the body was read whole, the connection stays usable."""

    status_code = 413


class InvalidRequest(ServiceError):
    """Parameters or a JSON body that fail validation: each error's place, message and type, never
    the input itself (a 2 MB body must not come back as a 2 MB answer), at most MAX_SHOWN_ERRORS."""

    status_code = 422
    MAX_SHOWN_ERRORS: ClassVar[int] = 10

    def __init__(self, errors: Sequence[Any]) -> None:
        self.errors: list[dict[str, Any]] = [
            {
                "loc": [part if isinstance(part, int) else str(part)[:64] for part in error.get("loc", ())],
                "msg": str(error.get("msg", ""))[:200],
                "type": str(error.get("type", ""))[:64],
            }
            for error in errors[: self.MAX_SHOWN_ERRORS]
        ]
        said = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" if error["loc"] else error["msg"]
            for error in self.errors
        )
        more = len(errors) - len(self.errors)
        super().__init__(said + (f"; and {more} more" if more > 0 else ""))

    def body(self) -> dict[str, Any]:
        return {"detail": self.detail, "errors": self.errors}


class InvalidImage(ServiceError):
    status_code = 400


class NotAnImage(ServiceError):
    status_code = 415


class BlankImage(ServiceError):
    status_code = 422


class NotADigit(ServiceError):
    """An image flagged not a digit while MNIST_REFUSE_NOT_A_DIGIT is on."""

    status_code = 422


class TooManyFiles(ServiceError):
    status_code = 413


class NoModel(ServiceError):
    status_code = 503


class QueueFull(ServiceError):
    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class ShuttingDown(ServiceError):
    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class DecodersBusy(ServiceError):
    """Every decoding thread stayed busy for the request's wait: nothing of it was decoded."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "1"}


class InferenceTimeout(ServiceError):
    status_code = 504


class InferenceFailed(ServiceError):
    status_code = 500


def speaks_v2(request: Request) -> bool:
    """The Open Inference Protocol's routes answer errors as {"error": ...}, as that protocol says."""
    path: str = request.url.path
    return path == "/v2" or path.startswith("/v2/")


async def service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    if exc.status_code >= 500:
        kind = type(exc).__name__
        refusals.warning(
            kind, "%s %s -> %d: %s", request.method, request.url.path, exc.status_code, exc.detail
        )
    body = {"error": exc.detail} if speaks_v2(request) else exc.body()
    return JSONResponse(body, status_code=exc.status_code, headers=exc.answer_headers())


async def http_error_handler(request: Request, exc: Exception) -> Response:
    """Starlette's own answers (an unknown path, a method not allowed), in the v2 shape there."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405 and (allowed := allowed_methods(request)) is not None:
        exc.headers = {**(exc.headers or {}), "Allow": allowed}
    if speaks_v2(request):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)
    return await http_exception_handler(request, exc)


METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str | None:
    """Every method some route takes at this path (asked of the router, method by method), or
    None under a mounted app (static files), which answers for itself. Starlette's 405 names only
    the methods of the first route it found there (`/train` is two routes, POST and GET), which
    RFC 9110 says is wrong."""
    routes = request.app.router.routes
    if any(isinstance(route, Mount) and route.matches(request.scope)[0] is Match.FULL for route in routes):
        return None
    allowed = [
        method
        for method in METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


async def validation_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's own parameter validation, in the same shape as every other error."""
    assert isinstance(exc, RequestValidationError)
    return await service_error_handler(request, InvalidRequest(exc.errors()))


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """Log with a traceback; tell the client nothing internal (paths, library messages)."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    key = "error" if speaks_v2(request) else "detail"
    return JSONResponse({key: "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(Exception, unexpected_error_handler)


class RecordsUnavailable(ServiceError):
    """The database of job and version records cannot be reached; predictions are not affected."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class JobConflict(ServiceError):
    status_code = 409

    def __init__(self, detail: str, job_id: str) -> None:
        super().__init__(detail)
        self.job_id = job_id


class JobNotFound(ServiceError):
    status_code = 404


class VersionNotFound(ServiceError):
    status_code = 404


class Unauthorized(ServiceError):
    status_code = 401
    headers: ClassVar[dict[str, str] | None] = {"WWW-Authenticate": "Bearer"}


class ModelStoreUnavailable(ServiceError):
    """The object store that keeps model weights cannot be reached; predictions are not affected."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class ModelObjectCorrupt(ServiceError):
    """A version's weights are missing or do not match their recorded sha256: never loaded."""

    status_code = 409


class NoTrainer(ServiceError):
    """No live trainer has a slot and no job may wait: nothing could run a new job now."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "5"}


class FeedbackNotFound(ServiceError):
    status_code = 404


class RecentInputGone(ServiceError):
    """A correction named a prediction whose input this process no longer holds (or never did)."""

    status_code = 404


class TooMuchFeedback(ServiceError):
    """This client sent its share of corrections for now: it may send again after `retry_after_s`."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int = 1) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s

    def answer_headers(self) -> dict[str, str] | None:
        return {"Retry-After": str(self.retry_after_s)}


class ReviewQueueFull(ServiceError):
    """As many corrections wait for review as may: new ones without the token wait until some are reviewed."""

    status_code = 503
    headers: ClassVar[dict[str, str] | None] = {"Retry-After": "60"}
