"""The vendor REST API on 127.0.0.1: vendor-shaped bodies, vendor-style auth and errors, injectable faults.

Contract (used by Simulator, tests, demo):
    sim = RestSimulator(api_key=..., host="127.0.0.1", port=0, seed=7)
    await sim.start(); sim.url -> "http://127.0.0.1:<port>"; await sim.stop()   (start/stop may run in different
    tasks)
    sim.inject(path_prefix=None, *, status=None, retry_after=None, delay=0.0, invalid_json=False, times=1,
               message=None, headers=None, body=None, body_bytes=None, compress=False)
    sim.clear_faults()
    sim.requests -> list[RecordedRequest(path, params, auth)] of requests seen (auth = "query"|"bearer"|None)

The same faults can be steered over HTTP, for a standalone `mcp-polygon simulate`:
    curl -X POST   http://127.0.0.1:8100/_sim/faults -d '{"path_prefix": "/v3/trades", "status": 429, "retry_after": 1}'
    curl -X POST   http://127.0.0.1:8100/_sim/faults -d '{"body_bytes": 100000000, "compress": true}'
    curl -X DELETE http://127.0.0.1:8100/_sim/faults
    curl           http://127.0.0.1:8100/_sim/faults      (active faults)
    curl           http://127.0.0.1:8100/_sim/requests    (the last requests seen)
"""

from __future__ import annotations

import asyncio
import gzip
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from mcp_polygon.simulator.httpserver import HttpRequest, HttpResponse, HttpServer
from mcp_polygon.simulator.rest_data import RestResponder, SimError, request_id

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/_sim/"
MAX_RECORDED = 10_000
PRICING = "https://massive.com/pricing"

# Vendor-like bodies for injected statuses. 5xx from a proxy come back as HTML, as they do in real life.
_FAULT_BODIES: dict[int, dict[str, Any]] = {
    400: {"status": "ERROR", "error": "Could not parse the request parameters."},
    401: {"status": "ERROR", "error": "Unknown API Key"},
    403: {
        "status": "NOT_AUTHORIZED",
        "message": f"You are not entitled to this data. Please upgrade your plan at {PRICING}",
    },
    404: {"status": "NOT_FOUND", "message": "Data not found."},
    429: {
        "status": "ERROR",
        "error": "You've exceeded the maximum requests per minute, please wait or upgrade your subscription to "
        f"continue. {PRICING}",
    },
    500: {"status": "ERROR", "error": "Internal server error."},
}
_HTML_STATUSES = {502, 503, 504}


@dataclass
class RecordedRequest:
    path: str
    params: dict[str, str]  # the query, without apiKey
    auth: str | None  # "query" | "bearer" | None


@dataclass
class Fault:
    path_prefix: str | None = None
    status: int | None = None
    retry_after: float | str | None = None  # seconds, or an HTTP date sent as written
    delay: float = 0.0
    invalid_json: bool = False
    times: int | None = 1  # None: until cleared
    message: str | None = None  # replaces the vendor text in the error body
    headers: dict[str, str] | None = None  # extra response headers (e.g. Location for a redirect)
    body: Any = None  # a JSON body to answer 200 with (a crafted next_url, rows that echo a key)
    body_bytes: int | None = None  # answer 200 with a valid JSON body of this many bytes
    compress: bool = False  # send the body gzip-compressed (Content-Length is then the compressed size)
    payload: bytes | None = field(default=None, repr=False)  # the prepared 200 body (built once, at inject)

    def matches(self, path: str) -> bool:
        return (self.times is None or self.times > 0) and (
            self.path_prefix is None or path.startswith(self.path_prefix)
        )

    def public(self) -> dict[str, Any]:
        """The fault as the control endpoint shows it (without the prepared body)."""
        shown = asdict(self)
        del shown["payload"]
        return shown


def sized_body(n_bytes: int) -> bytes:
    """A vendor-shaped JSON body of exactly n_bytes (at least 38): rows of padding, the last one sized to fit."""
    head, row = b'{"status":"OK","results":[', b'{"t":1704067200000,"pad":"' + b"x" * 100 + b'"},'
    last_open, last_close = b'{"pad":"', b'"}]}'
    room = max(0, n_bytes - len(head) - len(last_open) - len(last_close))
    count = room // len(row)
    return head + row * count + last_open + b"x" * (room - count * len(row)) + last_close


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, orjson.dumps(body), "application/json", headers or {})


class RestSimulator:
    def __init__(self, *, api_key: str, host: str = "127.0.0.1", port: int = 0, seed: int = 7) -> None:
        self.api_key = api_key
        self.host = host
        self.port = port
        self.url = f"http://{host}:{port}"
        self.requests: list[RecordedRequest] = []
        self.faults: list[Fault] = []
        self._responder = RestResponder(seed=seed)
        self._http = HttpServer(self._handle, host, port)

    async def start(self) -> None:
        self.port = await self._http.start()
        self.url = f"http://{self.host}:{self.port}"
        log.debug("REST simulator at %s", self.url)

    async def stop(self) -> None:
        await self._http.stop()

    async def __aenter__(self) -> RestSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- fault injection ----------------------------------------------------------------------------------------

    def inject(
        self,
        path_prefix: str | None = None,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        delay: float = 0.0,
        invalid_json: bool = False,
        times: int | None = 1,
        message: str | None = None,
        headers: dict[str, str] | None = None,
        body: Any = None,
        body_bytes: int | None = None,
        compress: bool = False,
    ) -> Fault:
        """Make the next `times` requests under `path_prefix` (None: any path) misbehave.

        delay: seconds to wait before answering (then answer normally unless another field says otherwise).
        status: answer with this HTTP status and a vendor-like body (with Retry-After when retry_after is set:
        seconds, or a string such as an HTTP date sent as written); headers: extra response headers.
        invalid_json: answer 200 with a truncated JSON body.
        body: answer 200 with this JSON body; body_bytes: with a valid JSON body of that many bytes;
        compress: send either gzip-compressed, as a compressing proxy would.
        """
        fault = Fault(
            path_prefix, status, retry_after, delay, invalid_json, times, message, headers, body, body_bytes, compress
        )
        if body is not None or body_bytes is not None:
            # Built here, once: a body of many megabytes is served to every matching request without rebuilding.
            payload = orjson.dumps(body) if body is not None else sized_body(body_bytes or 0)
            fault.payload = gzip.compress(payload, compresslevel=6) if compress else payload
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path):
                if fault.times is not None:
                    fault.times -= 1
                return fault
        return None

    # -- request handling ---------------------------------------------------------------------------------------

    async def _handle(self, request: HttpRequest) -> HttpResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return self._control(request)
        query = dict(request.query)
        key_in_query = query.pop("apiKey", None)
        bearer = request.headers.get("authorization", "")
        auth = "query" if key_in_query is not None else "bearer" if bearer.lower().startswith("bearer ") else None
        self.requests.append(RecordedRequest(request.path, query, auth))
        del self.requests[:-MAX_RECORDED]
        rid = request_id(request.path, len(self.requests))

        fault = self._take_fault(request.path)
        if fault is not None:
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.status is not None:
                return self._fault_response(fault, rid)
            if fault.invalid_json:
                return HttpResponse(200, b'{"status":"OK","results":[{"t":1', "application/json")
            if fault.payload is not None:
                headers = {"Content-Encoding": "gzip"} if fault.compress else {}
                return HttpResponse(200, fault.payload, "application/json", {**headers, **(fault.headers or {})})

        given = key_in_query if key_in_query is not None else bearer[7:].strip() if auth == "bearer" else None
        if not given:
            return _json(401, {"status": "ERROR", "request_id": rid, "error": "API Key was not provided"})
        if given != self.api_key:
            return _json(401, {"status": "ERROR", "request_id": rid, "error": "Unknown API Key"})
        if request.method != "GET":
            return _json(405, {"status": "ERROR", "request_id": rid, "error": "Method not allowed"})
        try:
            status, body = self._responder.respond(request.path, query, self.url)
        except SimError as exc:
            return _json(exc.status, {**exc.body, "request_id": rid})
        return _json(status, body)

    def _fault_response(self, fault: Fault, rid: str) -> HttpResponse:
        status = fault.status or 500
        headers = dict(fault.headers or {})
        if isinstance(fault.retry_after, str):
            headers["Retry-After"] = fault.retry_after
        elif fault.retry_after is not None:
            value = fault.retry_after
            headers["Retry-After"] = str(int(value)) if float(value).is_integer() else str(value)
        if status in _HTML_STATUSES and fault.message is None:
            phrase = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}[status]
            page = f"<html><head><title>{status} {phrase}</title></head><body><h1>{phrase}</h1></body></html>"
            return HttpResponse(status, page.encode(), "text/html", headers)
        body = dict(_FAULT_BODIES.get(status) or _FAULT_BODIES[500 if status >= 500 else 400])
        if fault.message is not None:
            body["error" if "error" in body else "message"] = fault.message
        return _json(status, {**body, "request_id": rid}, headers)

    def _control(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/_sim/faults" and request.method == "POST":
            try:
                spec = orjson.loads(request.body or b"{}")
                fault = self.inject(**spec)
            except (orjson.JSONDecodeError, TypeError) as exc:
                fields = (
                    "path_prefix, status, retry_after, delay, invalid_json, times, message, headers, body, "
                    "body_bytes, compress"
                )
                return _json(400, {"status": "ERROR", "error": f"Bad fault ({exc}); fields: {fields}"})
            return _json(200, {"status": "OK", "fault": fault.public()})
        if request.path == "/_sim/faults" and request.method == "DELETE":
            self.clear_faults()
            return _json(200, {"status": "OK"})
        if request.path == "/_sim/faults" and request.method == "GET":
            active = [f.public() for f in self.faults if f.times is None or f.times > 0]
            return _json(200, {"status": "OK", "faults": active})
        if request.path == "/_sim/requests" and request.method == "GET":
            return _json(200, {"status": "OK", "requests": [asdict(r) for r in self.requests[-100:]]})
        return _json(404, {"status": "NOT_FOUND", "message": "Control endpoints: /_sim/faults, /_sim/requests"})


__all__ = ["Fault", "RecordedRequest", "RestSimulator"]
