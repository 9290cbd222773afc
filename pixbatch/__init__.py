"""pixbatch: run large batches of paid P-Image jobs without overspending or losing work.

The library behind the ``pixbatch`` command; a notebook can call it directly.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
