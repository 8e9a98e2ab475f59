"""Test and benchmark helpers that ship with kptrace.

Kept inside the package (not only under tests/) so the benchmark script and
users reproducing a performance report can generate the same synthetic
kube-proxy dumps with ``python -m kptrace.testing.generator``.  Stdlib only.
"""

from __future__ import annotations

from typing import Any

__all__ = ["Endpoint", "GeneratedRuleset", "ServicePort", "generate_iptables"]


def __getattr__(name: str) -> Any:
    # Lazy re-export: importing the generator eagerly here would make
    # ``python -m kptrace.testing.generator`` warn about a double import.
    if name in __all__:
        from kptrace.testing import generator

        return getattr(generator, name)
    raise AttributeError(name)
