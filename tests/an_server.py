#!/usr/bin/env python3
"""Stand-in for the Action Network API v2, for joinblock's tests and benchmarks.

Binds 127.0.0.1 only. Python 3.11 standard library only.

    python3 tests/an_server.py --port 0 --port-file /tmp/an.port [--api-key test-key] [--verbose]
        [--tls CERT KEY]

--port 0 picks a free port; the chosen port is written to --port-file (atomically) and
"listening on http://127.0.0.1:PORT" is printed. Serves until SIGTERM or SIGINT.

API (header OSDI-API-Token must equal the api key, else 403; errors are {"error": "..."}):
    GET  /api/v2/people/?filter=email_address eq '<email>'   (quote in value doubled)
    GET  /api/v2/people/<uuid>
    GET  /api/v2/people/<uuid>/taggings?page=N
    GET  /api/v2/tags?page=N
    GET  /api/v2/tags/<uuid>
    POST /api/v2/people/   {"person":{"email_addresses":[{"address":..}]},
                            "add_tags":[names],"remove_tags":[names]}

Control API (no token; JSON in and out):
    POST /_control/reset         clear people, tags, faults, counters, connections, writes, latency
    POST /_control/state         {"tags":[names], "people":[{"email":..,"tags":[names]}],
                                  "latency_ms": n, "case_sensitive_names": bool}
                                 replaces people and tags; latency kept if absent.
                                 case_sensitive_names (default false) lets the group hold
                                 tags whose names differ only in case ("Member", "member")
    GET  /_control/state         the current data set, same shape
    POST /_control/rename_tag    {"from": name, "to": name}  same uuid, new name
    POST /_control/fault         {"kind": K, "path": prefix, "times": N, ...}
                                 path prefix defaults to /api/v2/; times defaults to 1,
                                 -1 = forever.
                                 Kinds: 429, 429-retry-after ("retry_after", default 1), 503, 500,
                                 502-html, invalid-json, wrong-shape ("body", default {"foo":1}),
                                 repeat-next, foreign-next, hang ("seconds", default 30),
                                 oversized ("bytes", default 8 MiB), trickle (a body of at
                                 most 4 KiB, one byte every 0.1 s), redirect-foreign,
                                 redirect-same (302 to the same URL), status (answers
                                 "status", default 404, with {"error": ...}; no body for
                                 304), totals (sets "total_pages" / "total_records" of a
                                 collection page to the given integers, or decimal strings
                                 for numbers past PHP's; null removes one).
                                 foreign-next / redirect-foreign take "origin"
                                 (default http://127.0.0.2:PORT).
                                 Only requests with a valid token consume a fault; the first
                                 matching rule (in the order added) is used.
    POST /_control/rate_limit    {"rps": R, "burst": B, "kind": K}  Action Network's limit, for
                                 every client together; over it, a request with a valid token
                                 is answered 429 with Retry-After (whole seconds until it
                                 would pass). Kinds:
                                   bucket (default): B tokens (default R) refilled at R a second;
                                   fixed: at most R requests in each whole second of the
                                     server's clock, refused ones counted too;
                                   sliding: at most R requests in any 1-second span (both ends
                                     included), refused ones counted too: the strictest
                                     reading of "R per second".
                                 {"rps": null} lifts it; reset lifts it too.
    POST /_control/shapes        {"empty_page": E, "next_on_last": bool, "totals": bool,
                                  "chunked": bool, "person_taggings_link": bool,
                                  "tag_link_missing": [names]}  how answers are shaped, one
                                 switch per variant the real API may send; the defaults
                                 (today's shapes, restored by reset) are "list", false, true,
                                 false, true, []. Keys left out keep their value.
                                   empty_page: an empty collection page (people, taggings, tag
                                     list) as "list" (_embedded with an empty list),
                                     "no-embedded" (no _embedded), "no-key" (_embedded: {}) or
                                     "bare" (the whole answer is {});
                                   next_on_last: every taggings and tag list page links `next`
                                     (page + 1), the last one too, as the people list does;
                                   totals: false leaves out total_pages and total_records of
                                     taggings pages (whether a person's taggings have them is
                                     unconfirmed; the tag list's are documented);
                                   chunked: API answers come chunked, without Content-Length;
                                   person_taggings_link: false leaves out a person's
                                     osdi:taggings link;
                                   tag_link_missing: taggings of these tags (names) have no
                                     osdi:tag link.
    GET  /_control/shapes        the current switches
    GET  /_control/counts        {"total", "by_path", "requests": [{method, path, query,
                                  had_token, token_ok}], "rejected": 429s of the
                                  rate limit}  /api/v2 requests only
    POST /_control/counts/reset  zero the request counters, keep the data and connection count
    GET  /_control/writes        [{"start", "end", "email", "add_tags", "remove_tags"}]
                                 (time.monotonic() seconds, comparable across processes)
    GET  /_control/connections   {"connections": N} TCP connections that carried /api/v2 requests
                                 since the last reset
"""

import argparse
import json
import math
import os
import re
import signal
import ssl
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlencode, urlsplit

PER_PAGE = 25
DATE = "2024-01-01T00:00:00Z"
NAMESPACE = uuid.UUID("6f1b6a52-3c1e-4d8e-9a57-0c2f4e7b9d10")
# A quote inside the value is written twice; anything else (lone or unterminated quote) is invalid.
FILTER_RE = re.compile(r"\s*email_address\s+eq\s+'((?:[^']|'')*)'\s*")

# Faults that replace the normal answer, and faults that alter it.
REPLACING_FAULTS = {"429", "429-retry-after", "503", "500", "502-html", "wrong-shape",
                    "oversized", "trickle", "redirect-foreign", "redirect-same", "status", "hang"}
ALTERING_FAULTS = {"invalid-json", "repeat-next", "foreign-next", "totals"}
# Statuses whose answers carry no body (HTTP/1.1).
BODILESS = {204, 304}


class ApiError(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Reply:
    status: int
    payload: object = None          # JSON value, serialised when sent
    raw: bytes | None = None        # sent as is instead of payload
    content_type: str = "application/json"
    headers: dict = field(default_factory=dict)
    pad_bytes: int = 0              # oversized: stream a JSON body of exactly this many bytes
    trickle: bool = False           # trickle: send that body a byte at a time, 0.1 s apart
    chunked: bool = False           # Transfer-Encoding: chunked, no Content-Length


@dataclass
class Tag:
    id: str
    name: str


@dataclass
class Person:
    id: str
    email: str
    tag_ids: list = field(default_factory=list)   # tagging order
    tag_set: set = field(default_factory=set)     # the same ids, for duplicate checks


@dataclass
class Fault:
    kind: str
    path: str
    remaining: int                  # -1 = forever
    params: dict


# Today's shapes; /_control/shapes switches each variant the real API may send.
DEFAULT_SHAPES = {"empty_page": "list", "next_on_last": False, "totals": True, "chunked": False,
                  "person_taggings_link": True, "tag_link_missing": []}
EMPTY_PAGES = ("list", "no-embedded", "no-key", "bare")
RATE_LIMITS = ("bucket", "fixed", "sliding")


class Limiter:
    """Action Network's request limit, as one of several plausible servers would count it."""

    def __init__(self, kind, rps, burst):
        self.kind, self.rps, self.burst = kind, rps, burst
        self.tokens, self.last = burst, time.monotonic()   # bucket
        self.window, self.in_window = None, 0                # fixed
        self.recent = []                                     # sliding: every request's time

    def take(self, now):
        """None when the request may pass, else the seconds until one would."""
        if self.kind == "bucket":
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rps)
            self.last = now
            if self.tokens >= 1:
                self.tokens -= 1
                return None
            return (1 - self.tokens) / self.rps
        if self.kind == "fixed":
            window = math.floor(now)
            if window != self.window:
                self.window, self.in_window = window, 0
            self.in_window += 1
            return None if self.in_window <= self.rps else window + 1 - now
        # A request exactly 1 s after another still shares a window with it.
        self.recent = [t for t in self.recent if t >= now - 1.0]
        refused = len(self.recent) >= self.rps
        self.recent.append(now)
        return self.recent[0] + 1.0 - now if refused else None


class State:
    """Everything the server knows. All access goes through `lock`."""

    def __init__(self):
        self.lock = threading.Lock()
        self.connections = 0
        self.reset()

    def reset(self):
        self.clear_data()
        self.faults = []
        self.writes = []
        self.latency_ms = 0
        self.connections = 0
        self.rate_limit = None      # a Limiter
        self.shapes = dict(DEFAULT_SHAPES)
        self.reset_counts()

    def clear_data(self):
        self.tags = {}              # id -> Tag, creation order
        self.tag_by_name = {}       # name_key(name) -> Tag
        self.case_sensitive_names = False
        self.people = {}            # id -> Person
        self.person_by_email = {}   # lower-case email -> Person

    def reset_counts(self):
        self.requests = []
        self.by_path = {}
        self.rejected = 0

    def take_token(self):
        """None when the request may pass, else the seconds until one would (the rate limit)."""
        wait = None if self.rate_limit is None else self.rate_limit.take(time.monotonic())
        if wait is not None:
            self.rejected += 1
        return wait

    # --- data ---

    def name_key(self, name):
        """Action Network keeps tag names unique without regard to case; a test can lift that."""
        return name if self.case_sensitive_names else name.lower()

    def tag(self, name, create):
        tag = self.tag_by_name.get(self.name_key(name))
        if tag is None and create:
            tag = Tag(self.new_tag_id(name), name)
            self.tags[tag.id] = tag
            self.tag_by_name[self.name_key(name)] = tag
        return tag

    def new_tag_id(self, name):
        # Name-based so hrefs are predictable; a rename can leave the old name's id taken.
        seed = f"tag:{self.name_key(name)}"
        tag_id, n = str(uuid.uuid5(NAMESPACE, seed)), 0
        while tag_id in self.tags:
            n += 1
            tag_id = str(uuid.uuid5(NAMESPACE, f"{seed}:{n}"))
        return tag_id

    def person(self, email, create):
        person = self.person_by_email.get(email.lower())
        if person is None and create:
            person = Person(str(uuid.uuid5(NAMESPACE, f"person:{email.lower()}")), email)
            self.people[person.id] = person
            self.person_by_email[email.lower()] = person
        return person

    def add_tagging(self, person, name):
        tag = self.tag(name, create=True)
        if tag.id not in person.tag_set:
            person.tag_ids.append(tag.id)
            person.tag_set.add(tag.id)

    def remove_tagging(self, person, name):
        tag = self.tag(name, create=False)
        if tag is not None and tag.id in person.tag_set:
            person.tag_ids.remove(tag.id)
            person.tag_set.discard(tag.id)

    def load(self, tags, people, case_sensitive_names=False):
        self.clear_data()
        self.case_sensitive_names = case_sensitive_names
        for name in tags:
            self.tag(name, create=True)
        for entry in people:
            person = self.person(entry["email"], create=True)
            for name in entry.get("tags", []):
                self.add_tagging(person, name)

    def dump(self):
        return {
            "tags": [t.name for t in self.tags.values()],
            "people": [{"email": p.email, "tags": [self.tags[i].name for i in p.tag_ids]}
                       for p in self.people.values()],
            "latency_ms": self.latency_ms,
            "case_sensitive_names": self.case_sensitive_names,
        }

    def rename(self, old, new):
        tag = self.tag_by_name.get(self.name_key(old))
        if tag is None:
            raise ApiError(404, f"No tag named {old}")
        clash = self.tag_by_name.get(self.name_key(new))
        if clash is not None and clash is not tag:
            raise ApiError(409, f"A tag named {new} already exists")
        del self.tag_by_name[self.name_key(old)]
        tag.name = new
        self.tag_by_name[self.name_key(new)] = tag

    # --- faults and counters ---

    def take_fault(self, path):
        """Consume one use of the first rule whose prefix matches `path`."""
        for fault in self.faults:
            if path.startswith(fault.path):
                if fault.remaining > 0:
                    fault.remaining -= 1
                    if fault.remaining == 0:
                        self.faults.remove(fault)
                return fault
        return None

    def count(self, method, path, query, had_token, token_ok):
        self.requests.append({"method": method, "path": path, "query": query,
                              "had_token": had_token, "token_ok": token_ok})
        self.by_path[path] = self.by_path.get(path, 0) + 1


# --- JSON rendering (base = "http://127.0.0.1:PORT") ---

def href(url):
    return {"href": url}


def person_json(base, person, shapes):
    url = f"{base}/api/v2/people/{person.id}"
    links = {"self": href(url)}
    if shapes["person_taggings_link"]:
        links["osdi:taggings"] = href(f"{url}/taggings")
    return {
        "identifiers": [f"action_network:{person.id}"],
        "email_addresses": [{"primary": True, "address": person.email}],
        "custom_fields": {},
        "_links": links,
    }


def tagging_json(base, person, tag, shapes):
    person_url = f"{base}/api/v2/people/{person.id}"
    tagging_id = uuid.uuid5(NAMESPACE, f"tagging:{person.id}:{tag.id}")
    links = {"self": href(f"{person_url}/taggings/{tagging_id}"), "osdi:person": href(person_url)}
    if tag.name not in shapes["tag_link_missing"]:
        links["osdi:tag"] = href(f"{base}/api/v2/tags/{tag.id}")
    return {
        "identifiers": [f"action_network:{tagging_id}"],
        "created_date": DATE,
        "modified_date": DATE,
        "item_type": "osdi:person",
        "_links": links,
    }


def tag_json(base, tag):
    return {
        "identifiers": [f"action_network:{tag.id}"],
        "name": tag.name,
        "created_date": DATE,
        "modified_date": DATE,
        "_links": {"self": href(f"{base}/api/v2/tags/{tag.id}")},
    }


def paged(items, page, key, page_url, render, shapes, totals=True):
    """A collection page: by default with totals, and `next` only before the last page."""
    total_pages = max(1, math.ceil(len(items) / PER_PAGE))
    chunk = items[(page - 1) * PER_PAGE: page * PER_PAGE]
    links = {"self": href(page_url(page))}
    if page < total_pages or shapes["next_on_last"]:
        links["next"] = href(page_url(page + 1))
    totals = {"total_pages": total_pages, "total_records": len(items)} if totals else {}
    return collection(key, [render(item) for item in chunk], shapes,
                      {**totals, "per_page": PER_PAGE, "page": page, "_links": links})


def collection(key, rendered, shapes, fields):
    """A collection page's answer; an empty one as the `empty_page` switch says."""
    if rendered or shapes["empty_page"] == "list":
        return {**fields, "_embedded": {key: rendered}}
    return {"no-embedded": fields, "no-key": {**fields, "_embedded": {}}, "bare": {}}[shapes["empty_page"]]


# --- request parsing helpers ---

def page_param(query):
    raw = query.get("page", ["1"])[0]
    try:
        page = int(raw)
    except ValueError:
        page = 0
    if page < 1:
        raise ApiError(400, f"Invalid page: {raw}")
    return page


def email_from_filter(query):
    raw = query.get("filter", [None])[0]
    if raw is None:
        raise ApiError(400, "Invalid filter: missing")
    match = FILTER_RE.fullmatch(raw)
    if match is None:
        raise ApiError(400, f"Invalid filter: {raw}")
    return match.group(1).replace("''", "'")


def parse_json(body):
    try:
        return json.loads(body or b"null")
    except ValueError as e:
        raise ApiError(400, f"Invalid JSON: {e}") from None


def string_list(value, what):
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ApiError(400, f"{what} must be a list of non-empty strings")
    return value


def signup_fields(data):
    person = data.get("person") if isinstance(data, dict) else None
    addresses = person.get("email_addresses") if isinstance(person, dict) else None
    first = addresses[0] if isinstance(addresses, list) and addresses else None
    email = first.get("address") if isinstance(first, dict) else None
    if not isinstance(email, str) or not email:
        raise ApiError(400, "person.email_addresses[0].address is required")
    return email, string_list(data.get("add_tags"), "add_tags"), \
        string_list(data.get("remove_tags"), "remove_tags")


def fault_from(data, port):
    if not isinstance(data, dict) or data.get("kind") not in REPLACING_FAULTS | ALTERING_FAULTS:
        kinds = ", ".join(sorted(REPLACING_FAULTS | ALTERING_FAULTS))
        raise ApiError(400, f"kind must be one of: {kinds}")
    path = data.get("path", "/api/v2/")
    times = data.get("times", 1)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ApiError(400, "path must be a path prefix starting with /")
    if not isinstance(times, int) or not (times == -1 or times >= 1):
        raise ApiError(400, "times must be -1 or a positive integer")
    params = {"retry_after": 1, "seconds": 30, "bytes": 8 << 20, "body": {"foo": 1},
              "origin": f"http://127.0.0.2:{port}", "status": 404,
              "total_pages": None, "total_records": None}
    params.update({k: data[k] for k in params if k in data})
    if not isinstance(params["bytes"], int) or params["bytes"] < 16:
        raise ApiError(400, "bytes must be an integer >= 16")
    if not isinstance(params["status"], int) or not 200 <= params["status"] <= 599:
        raise ApiError(400, "status must be an integer from 200 to 599")
    for key in ("total_pages", "total_records"):
        value = params[key]
        if value is not None and not (isinstance(value, int) or isinstance(value, str) and value.isdigit()):
            raise ApiError(400, f"{key} must be an integer, a decimal string or null")
    return Fault(data["kind"], path, times, params)


# --- faults ---

def retry_after_value(seconds):
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def replacing_reply(fault, target):
    """The answer a replacing fault gives instead of the normal one (None: answer normally)."""
    p = fault.params
    match fault.kind:
        case "429":
            return Reply(429, {"error": "Too many requests"})
        case "429-retry-after":
            return Reply(429, {"error": "Too many requests"},
                         headers={"Retry-After": retry_after_value(p["retry_after"])})
        case "503":
            return Reply(503, {"error": "Service unavailable"})
        case "500":
            return Reply(500, {"error": "Server error"})
        case "502-html":
            return Reply(502, raw=b"<html><body><h1>502 Bad Gateway</h1></body></html>\n",
                         content_type="text/html")
        case "wrong-shape":
            return Reply(200, p["body"])
        case "oversized":
            return Reply(200, pad_bytes=p["bytes"])
        case "trickle":
            return Reply(200, pad_bytes=min(p["bytes"], 4096), trickle=True)
        case "redirect-foreign":
            return Reply(302, {"error": "Moved"}, headers={"Location": p["origin"] + target})
        case "redirect-same":
            return Reply(302, {"error": "Moved"}, headers={"Location": target})
        case "status":
            if p["status"] in BODILESS:
                return Reply(p["status"], raw=b"")
            return Reply(p["status"], {"error": f"Fault: HTTP {p['status']}"})
        case "hang":
            time.sleep(p["seconds"])
    return None


def alter_reply(fault, reply, self_url):
    """Apply an altering fault to a normal answer."""
    if fault.kind == "invalid-json":
        body = json.dumps(reply.payload).encode()
        reply.raw = body[: max(1, len(body) // 2)]
        return
    if fault.kind == "totals":
        if not isinstance(reply.payload, dict):
            return
        for key in ("total_pages", "total_records"):
            if fault.params[key] is None:
                reply.payload.pop(key, None)
            else:
                reply.payload[key] = int(fault.params[key])
        return
    links = reply.payload.get("_links") if isinstance(reply.payload, dict) else None
    if links is None:
        return
    if fault.kind == "repeat-next":
        links["next"] = href(self_url)
    else:  # foreign-next: the would-be next (or self, on the last page) on another origin
        parts = urlsplit(links.get("next", links["self"])["href"])
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        links["next"] = href(fault.params["origin"] + target)


# --- HTTP ---

class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port, api_key, verbose, tls=None):
        super().__init__(("127.0.0.1", port), Handler)
        self.state = State()
        self.api_key = api_key
        self.verbose = verbose
        self.port = self.server_address[1]
        self.base = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        if tls:
            # A self-signed certificate: clients that verify TLS must refuse this server.
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self.socket = context.wrap_socket(self.socket, server_side=True)

    def handle_error(self, request, client_address):
        # A client that hangs up mid-answer (timeouts, oversized bodies) is expected.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes; avoid 40 ms stalls

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def dispatch(self, method):
        started = time.monotonic()
        length = self.headers.get("Content-Length") or "0"
        if "Transfer-Encoding" in self.headers or not length.isdigit():
            self.send_error(411, "A valid Content-Length is required")
            return
        body = self.rfile.read(int(length))
        url = urlsplit(self.path)
        try:
            if url.path.startswith("/_control/"):
                reply = self.control(method, url.path, body)
            elif url.path == "/api/v2" or url.path.startswith("/api/v2/"):
                reply = self.api(method, url, body, started)
            else:
                raise ApiError(404, f"Not found: {url.path}")
        except ApiError as e:
            reply = Reply(e.status, {"error": e.message})
        self.send_reply(reply)

    def send_error(self, code, message=None, explain=None):
        # Protocol-level errors (bad request line, unknown method) also answer JSON.
        self.send_reply(Reply(code, {"error": message or HTTPStatus(code).phrase},
                              headers={"Connection": "close"}))

    def send_reply(self, reply):
        body = b"" if reply.pad_bytes else (
            reply.raw if reply.raw is not None else json.dumps(reply.payload).encode())
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        if reply.chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(reply.pad_bytes or len(body)))
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.end_headers()
        if reply.pad_bytes:
            self.stream_padding(reply.pad_bytes, reply.trickle)
        elif reply.chunked:
            # Several chunks, each flushed, so that the client reads the body in parts.
            for chunk in (body[i:i + 1000] for i in range(0, len(body), 1000)):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(body)

    def stream_padding(self, size, trickle=False):
        head, tail = b'{"pad":"', b'"}'
        self.wfile.write(head)
        left = size - len(head) - len(tail)
        # A trickle keeps every read of the client short while the whole body takes minutes.
        chunk = b"x" if trickle else b"x" * 65536
        while left > 0:
            self.wfile.write(chunk[:left])
            left -= min(left, len(chunk))
            if trickle:
                self.wfile.flush()
                time.sleep(0.1)
        self.wfile.write(tail)

    def log_message(self, format, *args):
        if self.server.verbose:
            super().log_message(format, *args)

    # --- /api/v2 ---

    def api(self, method, url, body, started):
        state = self.server.state
        token = self.headers.get("OSDI-API-Token")
        token_ok = token == self.server.api_key
        with state.lock:
            # One handler serves one TCP connection: count those that carried API requests,
            # so tests can see keep-alive reuse (control requests are not counted).
            if not getattr(self, "counted_connection", False):
                self.counted_connection = True
                state.connections += 1
            state.count(method, url.path, url.query, token is not None, token_ok)
            latency = state.latency_ms
        time.sleep(latency / 1000)
        if not token_ok:
            raise ApiError(403, "API Key invalid or not present")
        with state.lock:
            wait = state.take_token()
            fault = state.take_fault(url.path) if wait is None else None
        if wait is not None:
            return Reply(429, {"error": "Too many requests"}, headers={"Retry-After": str(max(1, math.ceil(wait)))})
        if fault and fault.kind in REPLACING_FAULTS:
            reply = replacing_reply(fault, self.path)
            if reply is not None:
                return reply
        try:
            reply = Reply(200, self.route(method, url, body, started))
        except ApiError as e:
            reply = Reply(e.status, {"error": e.message})
        if fault and fault.kind in ALTERING_FAULTS:
            alter_reply(fault, reply, self.server.base + self.path)
        with state.lock:
            reply.chunked = state.shapes["chunked"]
        return reply

    def route(self, method, url, body, started):
        query = parse_qs(url.query, keep_blank_values=True)
        match method, [p for p in url.path.split("/") if p][2:]:
            case "GET", ["people"]:
                return self.find_person(query)
            case "POST", ["people"]:
                return self.signup(body, started)
            case "GET", ["people", person_id]:
                return self.get_person(person_id)
            case "GET", ["people", person_id, "taggings"]:
                return self.taggings(person_id, page_param(query))
            case "GET", ["tags"]:
                return self.list_tags(page_param(query))
            case "GET", ["tags", tag_id]:
                return self.get_tag(tag_id)
        raise ApiError(404, f"Not found: {method} {url.path}")

    def find_person(self, query):
        email, page = email_from_filter(query), page_param(query)
        base, state = self.server.base, self.server.state
        with state.lock:
            person = state.person(email, create=False) if page == 1 else None
            people = [person_json(base, person, state.shapes)] if person else []
            # Action Network quirk: `next` is present even on the last page.
            next_query = urlencode({"page": page + 1, "filter": query["filter"][0]}, quote_via=quote)
            return collection("osdi:people", people, state.shapes, {
                "per_page": PER_PAGE,
                "page": page,
                "_links": {"self": href(self.server.base + self.path),
                           "next": href(f"{base}/api/v2/people/?{next_query}")},
            })

    def get_person(self, person_id):
        with self.server.state.lock:
            person = self.known_person(person_id)
            return person_json(self.server.base, person, self.server.state.shapes)

    def taggings(self, person_id, page):
        base, state = self.server.base, self.server.state
        with state.lock:
            person = self.known_person(person_id)
            url = f"{base}/api/v2/people/{person.id}/taggings"
            return paged(person.tag_ids, page, "osdi:taggings", lambda n: f"{url}?page={n}",
                         lambda tag_id: tagging_json(base, person, state.tags[tag_id], state.shapes),
                         state.shapes, state.shapes["totals"])

    def list_tags(self, page):
        base, state = self.server.base, self.server.state
        with state.lock:
            return paged(list(state.tags.values()), page, "osdi:tags",
                         lambda n: f"{base}/api/v2/tags?page={n}",
                         lambda tag: tag_json(base, tag), state.shapes)

    def get_tag(self, tag_id):
        with self.server.state.lock:
            tag = self.server.state.tags.get(tag_id)
            if tag is None:
                raise ApiError(404, f"Tag not found: {tag_id}")
            return tag_json(self.server.base, tag)

    def known_person(self, person_id):
        person = self.server.state.people.get(person_id)
        if person is None:
            raise ApiError(404, f"Person not found: {person_id}")
        return person

    def signup(self, body, started):
        email, add, remove = signup_fields(parse_json(body))
        state = self.server.state
        with state.lock:
            person = state.person(email, create=True)
            for name in add:
                state.add_tagging(person, name)
            for name in remove:
                state.remove_tagging(person, name)
            state.writes.append({"start": started, "end": time.monotonic(), "email": email,
                                 "add_tags": add, "remove_tags": remove})
            return person_json(self.server.base, person, state.shapes)

    # --- /_control ---

    def control(self, method, path, body):
        state = self.server.state
        match method, path.rstrip("/"):
            case "POST", "/_control/reset":
                with state.lock:
                    state.reset()
            case "POST", "/_control/state":
                tags, people, latency, case_sensitive = state_fields(parse_json(body))
                with state.lock:
                    state.load(tags, people, case_sensitive)
                    if latency is not None:
                        state.latency_ms = latency
            case "GET", "/_control/state":
                with state.lock:
                    return Reply(200, state.dump())
            case "POST", "/_control/rename_tag":
                old, new = rename_fields(parse_json(body))
                with state.lock:
                    state.rename(old, new)
            case "POST", "/_control/fault":
                fault = fault_from(parse_json(body), self.server.port)
                with state.lock:
                    state.faults.append(fault)
            case "POST", "/_control/rate_limit":
                limiter = limiter_from(parse_json(body))
                with state.lock:
                    state.rate_limit = limiter
            case "POST", "/_control/shapes":
                shapes = shapes_from(parse_json(body))
                with state.lock:
                    state.shapes.update(shapes)
            case "GET", "/_control/shapes":
                with state.lock:
                    return Reply(200, dict(state.shapes))
            case "GET", "/_control/counts":
                with state.lock:
                    return Reply(200, {"total": len(state.requests), "by_path": dict(state.by_path),
                                       "requests": list(state.requests), "rejected": state.rejected})
            case "POST", "/_control/counts/reset":
                with state.lock:
                    state.reset_counts()
            case "GET", "/_control/writes":
                with state.lock:
                    return Reply(200, list(state.writes))
            case "GET", "/_control/connections":
                with state.lock:
                    return Reply(200, {"connections": state.connections})
            case _:
                raise ApiError(404, f"Not found: {method} {path}")
        return Reply(200, {"ok": True})


def state_fields(data):
    if not isinstance(data, dict):
        raise ApiError(400, "state must be a JSON object")
    tags = string_list(data.get("tags"), "tags")
    people = data.get("people") or []
    if not isinstance(people, list) or not all(
            isinstance(p, dict) and isinstance(p.get("email"), str) and p["email"] for p in people):
        raise ApiError(400, "people must be a list of {\"email\": ..., \"tags\": [...]}")
    for p in people:
        string_list(p.get("tags"), f"tags of {p['email']}")
    latency = data.get("latency_ms")
    if latency is not None and (not isinstance(latency, (int, float)) or latency < 0):
        raise ApiError(400, "latency_ms must be a number >= 0")
    case_sensitive = data.get("case_sensitive_names", False)
    if not isinstance(case_sensitive, bool):
        raise ApiError(400, "case_sensitive_names must be true or false")
    return tags, people, latency, case_sensitive


def limiter_from(data):
    rps = data.get("rps") if isinstance(data, dict) else None
    burst = data.get("burst", rps) if isinstance(data, dict) else None
    kind = data.get("kind", "bucket") if isinstance(data, dict) else None
    if rps is None:
        return None
    if not (isinstance(rps, (int, float)) and rps > 0 and isinstance(burst, (int, float)) and burst >= 1
            and kind in RATE_LIMITS):
        raise ApiError(400, f"rps must be > 0, burst >= 1 and kind one of {', '.join(RATE_LIMITS)}; or rps null")
    return Limiter(kind, float(rps), float(burst))


def shapes_from(data):
    if not isinstance(data, dict) or not set(data) <= set(DEFAULT_SHAPES):
        raise ApiError(400, f"shapes takes an object with keys among {', '.join(DEFAULT_SHAPES)}")
    for key, value in data.items():
        ok = {"empty_page": value in EMPTY_PAGES, "tag_link_missing": isinstance(value, list)
              and all(isinstance(v, str) for v in value)}.get(key, isinstance(value, bool))
        if not ok:
            raise ApiError(400, f"shapes: invalid {key}: {json.dumps(value)}")
    return data


def rename_fields(data):
    old = data.get("from") if isinstance(data, dict) else None
    new = data.get("to") if isinstance(data, dict) else None
    if not (isinstance(old, str) and old and isinstance(new, str) and new):
        raise ApiError(400, "rename_tag needs {\"from\": name, \"to\": name}")
    return old, new


def write_port_file(path, port):
    # Write then rename, so a reader never sees a partial file.
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{port}\n")
    os.replace(tmp, path)


def main():
    parser = argparse.ArgumentParser(description="Action Network API v2 stand-in (127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="file to write the bound port to")
    parser.add_argument("--api-key", default="test-key")
    parser.add_argument("--verbose", action="store_true", help="log every request to stderr")
    parser.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"), help="serve https with these PEM files")
    args = parser.parse_args()

    server = Server(args.port, args.api_key, args.verbose, args.tls)
    if args.port_file:
        write_port_file(args.port_file, server.port)
    print(f"listening on {server.base}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
