"""Every error answer has one shape (ErrorBody) and never carries a stack trace or internals."""

from __future__ import annotations

import logging

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec

from api.schemas import ErrorBody

log = logging.getLogger(__name__)

_KIND_BY_STATUS = {
    400: "invalid_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 413: "payload_too_large", 415: "unsupported_media_type",
    429: "rate_limited", 503: "unavailable",
}

ERROR_RESPONSES = {
    400: ResponseSpec(ErrorBody, description="invalid_request, invalid_exchange, invalid_symbol, "
                      "invalid_timeframe, batch_too_large"),
    401: ResponseSpec(ErrorBody, description="Missing or invalid X-API-Key"),
    404: ResponseSpec(ErrorBody, description="unknown_symbol: no online features for it"),
    409: ResponseSpec(ErrorBody, description="feature_set_mismatch, timeframe_mismatch, no_price"),
    413: ResponseSpec(ErrorBody, description="Request body larger than RTML_API_MAX_BODY_BYTES"),
    429: ResponseSpec(ErrorBody, description="Rate limit exceeded (RTML_API_RATE_LIMIT)"),
    503: ResponseSpec(ErrorBody, description="stale_features, features_warming_up, no_champion, "
                      "online_store_unavailable"),
}


class ApiError(Exception):
    """An answer that is not a prediction: status, a stable ``kind`` and a sentence for people."""

    def __init__(self, status_code: int, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.kind = kind
        self.detail = detail


def _count(request: Request, kind: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind).inc()


def _response(request: Request, status: int, kind: str, detail: str, headers=None) -> Response:
    _count(request, kind)
    return Response(ErrorBody(status, kind, detail), status_code=status, headers=headers)


def api_error_handler(request: Request, error: ApiError) -> Response:
    return _response(request, error.status_code, error.kind, error.detail)


def http_error_handler(request: Request, error: HTTPException) -> Response:
    status = error.status_code
    if status >= 500:  # Litestar's own 5xx (e.g. an unhandled internal) stays opaque
        return internal_error_handler(request, error)
    detail = str(error.detail)
    if isinstance(error, ValidationException):
        kind = "invalid_request"
        messages = [
            f"{item.get('key') or 'body'}: {item.get('message')}" if isinstance(item, dict) else str(item)
            for item in (error.extra or [])
        ] if isinstance(error.extra, list) else []
        if messages:
            detail = "; ".join(messages)[:500]
    else:
        kind = _KIND_BY_STATUS.get(status, "client_error")
    return _response(request, status, kind, detail, headers=error.headers)


def internal_error_handler(request: Request, error: Exception) -> Response:
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _response(request, 500, "internal", "internal error (logged on the server)")
