"""The check registry: `@check(...)` on a small function that reads a node and yields outcomes.

Each check lives in `checks/<group>/kptNNN_<slug>.py`; `checks/<group>/__init__.py` lists its
modules in `CHECKS`, and nothing is imported until the registry is first asked for a check
(sqlfluff's `get_rules` per plugin group works the same way). The summary users see is the
docstring's first line.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kptrace.model.finding import Location, Severity, Status
from kptrace.model.flow import Flow
from kptrace.model.source import ASSUMED_FILE, Source

if TYPE_CHECKING:
    from kptrace.checks.facts import CheckContext

GROUPS = ("input", "kernel", "netfilter", "ipvs", "routing", "host", "dns")
ID_RE = re.compile(r"^KPT\d{3}$")
DOCS_URL = "docs/checks/{id}.md"


@dataclass(frozen=True, slots=True)
class Outcome:
    """What a check function yields; the runner adds the check's id, name, severity and docs."""

    status: Status
    message: str
    locations: tuple[Location, ...] = ()
    missing: tuple[str, ...] = ()  # inputs that would settle a CANNOT_TELL (KPT002 and the summary list them)
    needs: tuple[str, ...] | None = None  # what this PASS must have seen whole, when not the check's `needs`
    # The remediation in machine form: --what-if changes (docs/what-if.md) that fix this FAIL, and the flows it
    # concerns when the check knows them (otherwise `kptrace check` finds them by sweeping the node).
    fix: tuple[str, ...] = ()
    flows: tuple[Flow, ...] = ()


CheckFn = Callable[["CheckContext"], Iterable[Outcome]]


@dataclass(frozen=True, slots=True)
class CheckSpec:
    id: str
    name: str
    severity: Severity
    summary: str
    remediation: str
    docs_url: str
    func: CheckFn
    needs_node: bool  # kept for the registry's shape: every check now reads the node
    late: bool  # True: runs after the others and reads their results (KPT002, KPT003)
    needs: tuple[str, ...] = ()  # kinds of fact (Node.FACTS, "a|b" for either) a PASS must have seen whole


_REGISTRY: dict[str, CheckSpec] = {}
_loaded = [False]


def check(*, id: str, name: str, severity: Severity, remediation: str, needs_node: bool = True,
          late: bool = False, needs: tuple[str, ...] = ()) -> Callable[[CheckFn], CheckFn]:
    """Register a check. Explicit arguments keep every ID greppable.

    `needs`: what a PASS must have seen in full. The runner turns a PASS into CANNOT_TELL when the
    input shows only an excerpt of it, or none (a filter listing cannot prove "every Service has
    endpoints"), so no check has to remember to.
    """

    def register(fn: CheckFn) -> CheckFn:
        if not ID_RE.match(id):
            raise ValueError(f"{fn.__module__}: check id '{id}' does not match KPTnnn")
        old = _REGISTRY.get(id)
        if old is not None and old.func.__module__ != fn.__module__:
            raise ValueError(f"{fn.__module__}: check id {id} is already used by {old.func.__module__}")
        doc = inspect.getdoc(fn) or ""
        _REGISTRY[id] = CheckSpec(id, name, Severity(severity), doc.split("\n", 1)[0].strip(), remediation,
                                  DOCS_URL.format(id=id), fn, needs_node, late, needs)
        return fn

    return register


def _load() -> None:
    if _loaded[0]:
        return
    for group in GROUPS:
        package = importlib.import_module(f"kptrace.checks.{group}")
        for module in package.CHECKS:
            importlib.import_module(f"kptrace.checks.{group}.{module}")
    _loaded[0] = True


def all_checks() -> list[CheckSpec]:
    _load()
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def get_check(key: str) -> CheckSpec | None:
    """A check by id (any case) or by name."""
    _load()
    spec = _REGISTRY.get(key.upper())
    return spec or next((s for s in _REGISTRY.values() if s.name == key.lower()), None)


# --- outcomes -----------------------------------------------------------------------------------

Where = Source | Location | None


def locations(*where: Where) -> tuple[Location, ...]:
    """Citations for a finding. Rules kptrace assumed itself (<assumed:kube-proxy>) are no input: never cited."""
    out: list[Location] = []
    for w in where:
        if isinstance(w, Source):
            if w.file == ASSUMED_FILE:
                continue
            w = Location(w.file, w.line)
        elif w is not None and not isinstance(w, Location):
            raise TypeError(f"cite a Source or a Location, not {type(w).__name__}")
        if w is not None and w not in out:
            out.append(w)
    return tuple(out)


def fail(message: str, *where: Where, fix: tuple[str, ...] = (), flows: tuple[Flow, ...] = ()) -> Outcome:
    """fix: the remediation as --what-if changes, which `kptrace check` verifies on the model."""
    return Outcome(Status.FAIL, message, locations(*where), fix=fix, flows=flows)


def passed(message: str, *where: Where, needs: tuple[str, ...] | None = None) -> Outcome:
    return Outcome(Status.PASS, message, locations(*where), needs=needs)


def warn(message: str, *where: Where) -> Outcome:
    """A diagnosis the input shows but cannot prove breaks this node's traffic on its own."""
    return Outcome(Status.WARN, message, locations(*where))


def info(message: str, *where: Where) -> Outcome:
    return Outcome(Status.INFO, message, locations(*where))


def missing(*files: str, why: str = "") -> Outcome:
    """Cannot tell: the input does not show what the check needs; `files` would settle it."""
    return Outcome(Status.CANNOT_TELL, f"cannot tell: give {', '.join(files)}" + (f" ({why})" if why else ""),
                   (), files)


def doc_page(check_id: str) -> str:
    """The check's page as shipped in the package (kptrace/checks/docs/KPTnnn.md, a copy of docs/checks/)."""
    from importlib import resources

    return (resources.files("kptrace") / "checks" / "docs" / f"{check_id}.md").read_text(encoding="utf-8")
