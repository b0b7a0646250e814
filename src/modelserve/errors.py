"""Error classes that carry their wire codes; stdlib only.

Each class names its HTTP status, a short type name (the JSON error's ``type``) and the
gRPC status code name, so every adapter maps errors to its wire in one place.
"""
from __future__ import annotations


# The answer to a request whose deadline passed before any worker ran it (in the frontend's queue or
# in a worker's socket, behind the batch it was running); counted as a ``timeout`` rejection.
QUEUE_TIMEOUT_MESSAGE = "Request timed out in the queue before reaching a worker"


class ModelServeError(Exception):
    """Base of every error that reaches a client."""

    status: int = 500
    type_name: str = "InternalServerException"
    grpc_code: str = "INTERNAL"
    reject_reason: str | None = None  # set where the request was turned away before a worker saw it

    def __init__(self, message: str, status: int | None = None, reject_reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if reject_reason is not None:
            self.reject_reason = reject_reason

    def to_dict(self) -> dict[str, object]:
        return {"code": self.status, "type": self.type_name, "message": self.message}


class BadRequestError(ModelServeError):
    status = 400
    type_name = "BadRequestException"
    grpc_code = "INVALID_ARGUMENT"


class UnauthorizedError(ModelServeError):
    status = 401
    type_name = "UnauthorizedException"
    grpc_code = "UNAUTHENTICATED"
    reject_reason = "auth"


class ForbiddenError(ModelServeError):
    status = 403
    type_name = "InvalidModelVersionException"
    grpc_code = "PERMISSION_DENIED"


class NotFoundError(ModelServeError):
    status = 404
    type_name = "ModelNotFoundException"
    grpc_code = "NOT_FOUND"


class VersionNotFoundError(NotFoundError):
    type_name = "ModelVersionNotFoundException"


class MethodNotAllowedError(ModelServeError):
    status = 405
    type_name = "MethodNotAllowedException"
    grpc_code = "UNIMPLEMENTED"


class ConflictError(ModelServeError):
    status = 409
    type_name = "ConflictStatusException"
    grpc_code = "ALREADY_EXISTS"


class RequestTooLargeError(ModelServeError):
    status = 413
    type_name = "RequestEntityTooLargeException"
    grpc_code = "RESOURCE_EXHAUSTED"
    reject_reason = "too_large"


class ServiceUnavailableError(ModelServeError):
    status = 503
    type_name = "ServiceUnavailableException"
    grpc_code = "UNAVAILABLE"


class GatewayTimeoutError(ModelServeError):
    status = 504
    type_name = "TimeoutException"
    grpc_code = "DEADLINE_EXCEEDED"


class InternalError(ModelServeError):
    status = 500
    type_name = "InternalServerException"
    grpc_code = "INTERNAL"


class WorkerError(ModelServeError):
    """A handler or worker failure; status comes from the worker's record."""

    status = 500
    type_name = "InternalServerException"
    grpc_code = "INTERNAL"


class ModelLoadError(ModelServeError):
    """A worker failed to load its model; the message carries the worker's traceback."""

    status = 500
    type_name = "InternalServerException"
    grpc_code = "INTERNAL"


class ConfigError(Exception):
    """Invalid server or model configuration (raised at start, not on a request)."""


_BY_STATUS: dict[int, type[ModelServeError]] = {
    400: BadRequestError,
    401: UnauthorizedError,
    403: ForbiddenError,
    404: NotFoundError,
    405: MethodNotAllowedError,
    409: ConflictError,
    413: RequestTooLargeError,
    503: ServiceUnavailableError,
    504: GatewayTimeoutError,
}


def error_for_status(status: int, message: str) -> ModelServeError:
    """Build the error class matching ``status`` (used for records that crossed a process)."""
    cls = _BY_STATUS.get(status, WorkerError)
    return cls(message, status)
