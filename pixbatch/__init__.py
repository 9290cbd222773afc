"""pixbatch: run large batches of paid P-Image jobs without overspending or losing work.

The library behind the ``pixbatch`` command; a notebook can call it directly::

    from pixbatch import load_manifest, estimate_manifest, PriceTable, run, RunOptions, build_report
    from pixbatch.render import render
    m = load_manifest("manifests/example.yaml")   # or a dict, or YAML text
    est = estimate_manifest(m, PriceTable.load())
    summary = run(m, options=RunOptions(base_url="http://127.0.0.1:8787", limit=10))  # a pilot
    print(render(build_report(m.state_path), "md"))

Inside a running event loop (Jupyter, an async app) await the coroutine forms instead:
``await run_async(m, options=...)``, ``await reconcile_async(...)``,
``await probe_sizes_report_async(urls, cache_path=...)``; the sync ``run`` and ``reconcile``
say so if called there (``estimate_manifest`` works in both).

Names are imported lazily, so ``import pixbatch`` stays cheap. (``expand``, ``reconcile``
and ``render`` are both modules and functions: import those functions from their modules.)
The package is typed (``py.typed``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"  # the one version: pyproject.toml reads it from here

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
    "list_failures": "report",
    "list_runs": "report",
    "load_manifest": "manifest",
    "load_manifest_shallow": "manifest",
    "probe_sizes": "probe",
    "probe_sizes_async": "probe",
    "probe_sizes_report_async": "probe",
    "read_status": "state",
    "reconcile_async": "reconcile",
    "run": "runner",
    "run_async": "runner",
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
