"""The shapes of the gateway's answers, counted by status code in ``stats["responses"]``.

- ``error``: the queue system's JSON, ``{"error": ..., "message": ...}``.
- ``apim``: the API-Management front end's own JSON, ``{"statusCode": N, "message": ...}``
  (rate limits and quotas are answered there, before the request reaches the queue).
- ``html``: a proxy's HTML error page (``text/html``). With ``html_errors`` every 5xx
  ``error`` comes out this way instead of JSON.
- ``garbage``: a body that starts like JSON and is not.
"""

from __future__ import annotations

from typing import Any, Callable

from starlette.responses import HTMLResponse, JSONResponse, Response

REASONS = {400: "Bad Request", 401: "Unauthorized", 402: "Insufficient Balance", 403: "Forbidden",
           404: "Not Found", 408: "Request Timeout", 409: "Conflict", 429: "Too Many Requests",
           500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}

HTML_PAGE = """<!DOCTYPE html>
<html><head><title>{code} {reason}</title></head>
<body><center><h1>{code} {reason}</h1></center>
<hr><center>The upstream service did not answer in time or answered with an error. Please try again later.</center>
</body></html>
"""


class Answers:
    def __init__(self, stats: dict[str, Any], settings: Callable[[], Any]):
        self._stats = stats
        self._settings = settings  # -> the current EmulatorConfig

    def count(self, code: int) -> None:
        r = self._stats["responses"]
        r[str(code)] = r.get(str(code), 0) + 1

    def error(self, code: int, error: str | None = None, message: str | None = None,
              headers: dict[str, str] | None = None, body: Any = None) -> Response:
        if code >= 500 and body is None and self._settings().html_errors:
            return self.html(code, headers)
        self.count(code)
        if body is None:
            body = {"error": error or REASONS.get(code, "Error"), "message": message or REASONS.get(code, "Error")}
        return JSONResponse(body, status_code=code, headers=headers)

    def apim(self, code: int, message: str, headers: dict[str, str] | None = None) -> Response:
        self.count(code)
        return JSONResponse({"statusCode": code, "message": message}, status_code=code, headers=headers)

    def html(self, code: int, headers: dict[str, str] | None = None) -> Response:
        self.count(code)
        page = HTML_PAGE.format(code=code, reason=REASONS.get(code, "Error"))
        return HTMLResponse(page, status_code=code, headers=headers)

    def ok(self, body: Any, code: int = 200) -> Response:
        self.count(code)
        return JSONResponse(body, status_code=code)

    def garbage(self, code: int, request_id: str) -> Response:
        self.count(code)
        return Response(b'{"request_id": "' + request_id.encode()[:12] + b'", "status": "QUEU<html>502 Bad Gateway',
                        status_code=code, media_type="application/json")
