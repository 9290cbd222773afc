"""The machine formats: JSON (every amount as micros and as a decimal string, no floats)
and CSV (one long, tidy table a spreadsheet can pivot)."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import functools
import io
import json
from typing import Any

from ..report import OutputFile, Outputs, Report, SpendTotals, Variance
from .layout import usd_decimal

_EXTRA: dict[type, tuple[str, ...]] = {Variance: ("delta_micros",), SpendTotals: ("delta_micros",),
                                       Outputs: ("truncated",)}


@functools.cache
def _names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls)) + _EXTRA.get(cls, ())


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, float):
        raise TypeError(f"a float reached the JSON report: {value!r}")
    return value


def _output_file(f: OutputFile) -> dict[str, Any]:
    # the one list that can have millions of entries: no generic walk
    return {"key": f.key, "step": f.step, "input_id": f.input_id, "path": f.path, "sha256": f.sha256,
            "bytes": f.bytes, "width": f.width, "height": f.height, "media_type": f.media_type}


def to_jsonable(obj: Any) -> Any:
    """A Report (or any part of it) as JSON-ready data: money as micros + decimal strings, no floats."""
    if isinstance(obj, OutputFile):
        return _output_file(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out: dict[str, Any] = {}
        for name in _names(type(obj)):
            if name == "gallery":  # thumbnails for the HTML page, not data
                continue
            value = getattr(obj, name)
            if name == "by_state":
                out[name] = dict(value)
                continue
            if name == "audit_sql":
                out[name] = [{"title": t, "sql": s} for t, s in value]
                continue
            out[name] = to_jsonable(value)
            if name.endswith("_micros"):
                out[name[: -len("_micros")] + "_usd"] = None if value is None else usd_decimal(value)
        return out
    if isinstance(obj, tuple | list):
        return [to_jsonable(x) for x in obj]
    return _plain(obj)


def render_json(r: Report, *, indent: int | None = 2) -> str:
    data = {"format": "pixbatch-report/1", **to_jsonable(r)}
    return json.dumps(data, indent=indent, ensure_ascii=False) + "\n"


CSV_COLUMNS = ("section", "step", "op", "tier", "state", "group", "metric", "value", "usd",
               "key", "input_id", "path", "sha256", "bytes", "width", "height")


def render_csv(r: Report) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    w.writeheader()

    def money(section: str, metric: str, micros: int | None, **kw: Any) -> None:
        if micros is not None:
            w.writerow({"section": section, "metric": metric, "value": micros, "usd": usd_decimal(micros), **kw})

    def count(section: str, metric: str, n: int | None, **kw: Any) -> None:
        if n is not None:
            w.writerow({"section": section, "metric": metric, "value": n, **kw})

    for f in dataclasses.fields(SpendTotals):
        v = getattr(r.spend.totals, f.name)
        (money if f.name.endswith("_micros") else count)("total", f.name, v)
    money("total", "delta_micros", r.spend.totals.delta_micros)
    money("total", "planned_low_micros", r.spend.planned_low_micros)
    money("total", "planned_high_micros", r.spend.planned_high_micros)
    for ln in r.spend.lines:
        where = {"step": ln.step, "op": ln.op, "tier": ln.tier}
        for f in dataclasses.fields(ln):
            if f.name in where:
                continue
            (money if f.name.endswith("_micros") else count)("spend", f.name, getattr(ln, f.name), **where)
    for v in r.spend.variance:
        count("variance", "items", v.items, group=v.cause)
        for m in ("est_low_micros", "est_high_micros", "charged_micros", "delta_micros"):
            money("variance", m, getattr(v, m), group=v.cause)
    for c in r.status.counts:
        count("status", "items", c.count, step=c.step, state=c.state)
    for section, groups in (("failure", r.status.failures), ("blocked", r.status.blocked)):
        for g in groups:
            count(section, "items", g.count, state=g.state, group=g.message)
            for e in g.examples:
                w.writerow({"section": section + "_example", "state": g.state, "group": g.message, "step": e.step,
                            "key": e.key, "input_id": e.input_id or "", "path": e.output_name or ""})
    for s in r.timing.steps:
        for m in ("finished", "queue_n", "queue_p50_ms", "queue_p95_ms", "processing_n", "processing_p50_ms",
                  "processing_p95_ms"):
            count("timing", m, getattr(s, m), step=s.step)
    for b in r.timing.buckets:
        count("throughput", "completed", b.completed, group=b.start.isoformat())
        count("throughput", "failed", b.failed, group=b.start.isoformat())
    for o in r.outputs.files:
        w.writerow({"section": "output", "step": o.step, "key": o.key, "input_id": o.input_id or "", "path": o.path,
                    "sha256": o.sha256, "bytes": o.bytes, "width": o.width or "", "height": o.height or ""})
    for n in r.notes:
        w.writerow({"section": "note", "group": n})
    return buf.getvalue()
