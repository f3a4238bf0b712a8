"""Registers lightning_async's strategy names in a fresh interpreter without ``import lightning_async``.

Installed with the ``lightning_async_autoload.pth`` line ``import lightning_async_autoload``. It adds a meta-path
hook that waits, at no cost, until ``lightning.pytorch`` has been imported by someone, then imports
``lightning_async`` (which registers ``"async_adaptive"`` and its variants). Nothing heavy happens at interpreter
start: torch and Lightning are not imported early. Set ``LIGHTNING_ASYNC_NO_AUTOLOAD=1`` to switch it off.
"""

from __future__ import annotations

import importlib.abc
import os
import sys

_TARGET = "lightning.pytorch"  # after the package (not a submodule) finished initializing


class _RegisterOnImport(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path, target=None):  # type: ignore[no-untyped-def]
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        original = spec.loader.exec_module

        def exec_module(module):  # type: ignore[no-untyped-def]
            original(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            try:
                import lightning_async  # noqa: F401  (registers the strategy names)
            except Exception as error:  # never break `import lightning` because of us
                print(f"lightning_async autoload failed: {error!r}", file=sys.stderr)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def install() -> None:
    if os.environ.get("LIGHTNING_ASYNC_NO_AUTOLOAD") or _TARGET in sys.modules:
        return
    if not any(isinstance(f, _RegisterOnImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _RegisterOnImport())


install()
