"""pixbatch: run large batches of paid P-Image jobs without overspending or losing work.

The library behind the ``pixbatch`` command; a notebook can call it directly::

    from pixbatch import load_manifest, estimate_manifest, PriceTable, run, RunOptions, build_report
    from pixbatch.render import render
    m = load_manifest("manifests/example.yaml")
    est = estimate_manifest(m, PriceTable.load())
    summary = run(m, options=RunOptions(base_url="http://127.0.0.1:8787"))
    print(render(build_report(m.state_path), "md"))

Names are imported lazily, so ``import pixbatch`` stays cheap. (``expand``, ``reconcile``
and ``render`` are both modules and functions: import those functions from their modules.)
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "Estimate": "estimate",
    "Manifest": "manifest",
    "PixbatchError": "errors",
    "PriceTable": "pricing",
    "Problem": "manifest",
    "Report": "report",
    "RunOptions": "runner",
    "RunSummary": "runner",
    "WorkItem": "items",
    "build_report": "report",
    "check_manifest": "manifest",
    "estimate_manifest": "estimate",
    "export_state": "export",
    "load_manifest": "manifest",
    "load_manifest_shallow": "manifest",
    "read_status": "state",
    "run": "runner",
    "start_emulator": "emulator",
}

__all__ = sorted([*_EXPORTS, "__version__"])


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'pixbatch' has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
