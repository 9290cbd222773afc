"""A misbehaving gateway or CDN, by name; and the scriptable queue's vocabulary.

A fault is a named way the gateway or its CDN breaks the contract. ``EmulatorConfig.faults``
applies names to every job; a script entry's ``"faults": [...]`` to the job it shapes
(see ``app.py`` for the script). The names, what each does and where it acts:

    submit answer     polling_url_elsewhere, request_id_traversal
    status document   media_url_file, media_url_malformed, media_url_missing, media_url_empty,
                      status_garbage, status_wrong_shape (also in webhook payloads, but the
                      two status_* faults, which only spoil the status endpoint's answer)
    media (cdn.py)    media_slow, media_redirect_loop, media_gzip_bomb, media_404, media_html

A faulty job is still a real job: accepted, processed and charged like any other. Only
what the client is told (or served) is wrong, which is what a client must survive.
"""

from __future__ import annotations

from typing import Any

from ..contract import TERMINAL_STATUSES

#: fault name -> what it imitates (one line; docs/emulator.md lists the same)
FAULTS: dict[str, str] = {
    "media_slow": "the CDN sends the output at media_drip_rate bytes per second (1 byte/s by default)",
    "media_redirect_loop": "the media URL redirects to a second URL that redirects back, forever",
    "media_gzip_bomb": "the media body is gzip (Content-Encoding: gzip): ~1 MB on the wire, gzip_bomb_bytes unpacked",
    "media_404": "the media URL answers 404 although the job is COMPLETED",
    "media_html": "the media URL answers 200 with an HTML page labelled Content-Type: image/jpeg",
    "media_url_file": "COMPLETED with media_url file:///etc/passwd",
    "media_url_malformed": "COMPLETED with a media_url that is not a valid URL (http://[::1/output.jpg)",
    "media_url_missing": "COMPLETED with an output object that has no media_url",
    "media_url_empty": "COMPLETED with media_url: []",
    "status_garbage": "every status answer for the job is 200 with a body that is not JSON",
    "status_wrong_shape": "every status answer for the job is JSON of the wrong shape (unknown status, no fields)",
    "request_id_traversal": "the submit answer's request_id contains ../ segments that lead to /_stray/ on this host",
    "polling_url_elsewhere": "the submit answer's polling_url points to another path (or stray_base_url)",
}

MALFORMED_URL = "http://[::1/output.jpg"
FILE_URL = "file:///etc/passwd"

SCRIPT_KEYS = frozenset({"submit", "body", "retry_after", "html", "drop_after_accept", "garbage", "status",
                         "error", "queue_time", "processing_time", "polls", "faults", "input_size"})


def check_faults(names: Any, where: str) -> list[str]:
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return [f"{where}: 'faults' must be a list of fault names"]
    unknown = [n for n in names if n not in FAULTS]
    return [f"{where}: unknown fault {n!r} (known: {', '.join(FAULTS)})" for n in unknown]


def traversal_id(request_id: str) -> str:
    """An id that starts like the real one, but whose ``..`` segments climb out of the status path."""
    return f"{request_id}/../../../../_stray/{request_id}"


def shape_status(doc: dict[str, Any], faults: frozenset[str]) -> dict[str, Any]:
    """The status document (or webhook payload) as the faulty gateway words it."""
    output = doc.get("output")
    if output is None or not faults:
        return doc
    output = dict(output)
    if "media_url_file" in faults:
        output["media_url"] = [FILE_URL]
    elif "media_url_malformed" in faults:
        output["media_url"] = [MALFORMED_URL]
    elif "media_url_empty" in faults:
        output["media_url"] = []
    elif "media_url_missing" in faults:
        output.pop("media_url", None)
    return {**doc, "output": output}


def wrong_shape(request_id: str) -> dict[str, Any]:
    """Valid JSON a client cannot use: an undocumented status, output as a string, no model or dates."""
    return {"request_id": request_id, "status": "DONE", "output": "output.jpg", "progress": "100%"}


# -- the script: entries are checked when queued, so a typo fails the test that made it --


def check_script_entry(i: int, entry: Any) -> list[str]:
    if not isinstance(entry, dict):
        return [f"outcome {i} must be an object"]
    out = [f"outcome {i}: unknown key {k!r} (known: {', '.join(sorted(SCRIPT_KEYS))})"
           for k in entry if k not in SCRIPT_KEYS]
    if "submit" in entry and not (_is_int(entry["submit"]) and 400 <= entry["submit"] <= 599):
        out.append(f"outcome {i}: 'submit' must be an HTTP error status (400-599)")
    if "retry_after" in entry and not (entry["retry_after"] is None or isinstance(entry["retry_after"], str)
                                       or _is_int(entry["retry_after"]) and entry["retry_after"] >= 0):
        out.append(f"outcome {i}: 'retry_after' must be seconds (an integer >= 0), a string (e.g. an HTTP date) "
                   "or null (no header)")
    if "status" in entry and entry["status"] not in TERMINAL_STATUSES:
        out.append(f"outcome {i}: 'status' must be one of {', '.join(sorted(TERMINAL_STATUSES))}")
    for k in ("queue_time", "processing_time"):
        if k in entry and not (isinstance(entry[k], (int, float)) and not isinstance(entry[k], bool)
                               and entry[k] >= 0):
            out.append(f"outcome {i}: {k!r} must be a number of seconds >= 0")
    polls = entry.get("polls", [])
    if not isinstance(polls, list):
        out.append(f"outcome {i}: 'polls' must be a list")
        polls = ()
    for p in polls:
        if not _poll_entry_ok(p):
            out.append(f"outcome {i}: each of 'polls' must be an HTTP status, 'garbage', 'drop', 'html' or "
                       '{"code": N, "html": true, "retry_after": ...}')
    if "faults" in entry:
        out.extend(check_faults(entry["faults"], f"outcome {i}"))
    size = entry.get("input_size")
    if "input_size" in entry and not (isinstance(size, list) and len(size) == 2
                                      and all(_is_int(x) and x >= 1 for x in size)):
        out.append(f"outcome {i}: 'input_size' must be [width, height] (lazy mode: the input size assumed)")
    return out


def _poll_entry_ok(p: Any) -> bool:
    if p in ("garbage", "drop", "html"):
        return True
    if _is_int(p):
        return p == 200 or 400 <= p <= 599
    if isinstance(p, dict):
        return (set(p) <= {"code", "html", "retry_after"} and _is_int(p.get("code"))
                and 400 <= p["code"] <= 599)
    return False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)
