"""One file per architecture family; importing this package registers every adapter in it.

To add a family, drop a module here whose adapter class is decorated with
``edgeprune.models.base.register`` — no other file changes.
"""

from __future__ import annotations

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
