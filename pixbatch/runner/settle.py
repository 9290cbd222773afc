"""A job's final status becomes the item's final state and charge.

A COMPLETED item's output is downloaded first (its checks may set the item's error; a failed
download leaves the item COMPLETED and paid, and the file comes on the next run). Where the
price depends on the output's size (a factor-mode upscale) and nothing was downloaded, the
output's header is read. The charge follows the price table's rule for the final status;
the ledger turns the item's reservation into that charge.

Every completed output is evidence about the gateway's sizes (``knowledge.Learner``). A
factor-mode output between the two readings of a tier boundary (4,000,000..4,194,304 px) is
charged by the reading the run knows, else by the price table's default (which never
under-counts) and kept as *provisional*; when a later output (a target-mode upscale) tells
the reading, the provisional charges of the run are revised to it: the item's charge, the
ledger and a ``state`` event carrying the difference (``revised``), so the report adds up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import state as st
from ..errors import PixbatchError, redact
from ..gateway import JobStatus
from ..knowledge import Learner, Observation
from ..pricing import PriceTable, priced_by_output_size
from .budget import BudgetLedger
from .download import Downloader


async def settle_item(row: st.ItemRow, s: JobStatus, *, downloader: Downloader, download: bool, table: PriceTable,
                      ledger: BudgetLedger, put: Callable[..., Any], learner: Learner | None = None) -> int:
    """Record the final status; returns the charge."""
    body = row.body_dict
    row.finished_at = st.utcnow()
    if row.started_at is None:
        row.started_at = row.finished_at
    row.gateway_status = s.status
    row.error = redact(s.error) if s.error else s.error  # a gateway's error may quote a presigned input URL
    if s.status == "COMPLETED":
        row.media_url = s.media_urls[0] if s.media_urls else None
        row.media_type = s.media_type
        if download and row.media_url:
            try:
                await downloader.download(row)
            except (PixbatchError, OSError) as exc:  # the item is done and paid; the file comes next run
                row.error = f"download failed: {exc}"
        elif download:
            downloader.no_media(row)
    out_size = (row.output_width, row.output_height) if row.output_width and row.output_height else None
    if out_size is None and s.status == "COMPLETED" and row.media_url and priced_by_output_size(row.op, body):
        out_size = await downloader.measure(row)  # the price depends on it: read just the image header
    learned = False
    if learner is not None:
        if s.status == "COMPLETED" and out_size is not None:
            # a chained item's recorded input may be a prediction (a resumed item): only a root's is evidence
            real_input = row.input_size if row.upstream is None else None
            learned = learner.observe(Observation(row.key, row.op, body, real_input, out_size))
        table = learner.table
    input_size = row.input_size
    if (out_size is None and input_size is None and s.status == "FAILED" and priced_by_output_size(row.op, body)
            and isinstance(body.get("image"), str) and row.upstream is None):
        # the gateway charges a failed factor upscale by the size it saw: read the input's header
        # (a chained item's image is its upstream's output, known only by a placeholder here)
        input_size = await downloader.measure_url(row, body["image"])
    charge = table.charge_for(row.op, s.status, out_size, body, input_size)
    reserved = row.reserved_micros
    ledger.settle(reserved, charge)
    row.reserved_micros = 0
    row.charged_micros = (row.charged_micros or 0) + charge
    row.state = s.status
    # the gateway's own measure of the job (created -> completed): what the report's timing can trust
    gateway_ms = None if s.server_seconds is None else round(s.server_seconds * 1000)
    put(row, charged=charge, released=reserved, gateway_ms=gateway_ms)
    if learner is not None:
        if table.charge_uncertain(row.op, s.status, out_size, body, input_size):
            learner.provisional[row.key] = (row, charge, out_size, input_size)
        if learned:
            revise(learner, ledger, put)
    return charge


def revise(learner: Learner, ledger: BudgetLedger, put: Callable[..., Any]) -> int:
    """Charge the run's provisional items by the reading just learned; returns the total difference."""
    total = 0
    for row, old, size, input_size in list(learner.provisional.values()):
        new = learner.table.charge_for(row.op, row.state, size, row.body_dict, input_size)
        if new != old:
            ledger.settle(old, new)
            row.charged_micros = (row.charged_micros or 0) + new - old
            put(row, charged=new - old, released=0,
                revised=f"{old} -> {new}: 1 MP = {learner.knowledge.megapixel:,} px, learned from "
                        f"{learner.knowledge.megapixel_evidence}")
            total += new - old
    learner.provisional.clear()
    return total
