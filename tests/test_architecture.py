"""The shape of chalicelib, read from its source: every module's imports (module-level and
function-local, TYPE_CHECKING included), its size, and its layer.

- No import cycle between chalicelib modules, of any length, lazy or not.
- No module over 450 lines (put a new concept in a module of its own instead).
- The layers of design.md's module map (LAYERS below, kept in step with it): the domain imports
  only the domain and the Whop port's types; ports and adapters import no application module;
  the foundation imports only the foundation. Every module has a layer, so a new one must be
  placed in the map.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "chalicelib"
MAX_LINES = 450

DOMAIN = "domain"
APPLICATION = "application"
ADAPTERS = "ports and adapters"
FOUNDATION = "foundation"

# The module map (design.md). A name ending in ".*" covers a package's modules.
LAYERS: dict[str, str] = {
    # Pure: no database, no HTTP, no Chalice, no clock; time is passed in.
    "models": DOMAIN, "attribution": DOMAIN, "cases": DOMAIN, "reminders": DOMAIN, "messages": DOMAIN,
    "kpis": DOMAIN, "lift": DOMAIN, "experiments": DOMAIN, "sequential": DOMAIN, "budgets": DOMAIN,
    "recovery_policy": DOMAIN, "retry_policy": DOMAIN,
    # What the routes, the consumer and the tick do, over the domain and the adapters.
    "webhooks": APPLICATION, "webhook_signature": APPLICATION, "webhook_text": APPLICATION,
    "ingest": APPLICATION, "processing": APPLICATION, "effects": APPLICATION, "claim_gate": APPLICATION,
    "claims": APPLICATION, "recovery": APPLICATION, "recovery_exec": APPLICATION, "replan": APPLICATION,
    "scheduler": APPLICATION, "links": APPLICATION, "measurement": APPLICATION, "breaker": APPLICATION,
    "retention": APPLICATION, "health": APPLICATION, "http": APPLICATION, "dashboard": APPLICATION,
    "openapi": APPLICATION, "openapi_routes": APPLICATION, "api": APPLICATION, "api.*": APPLICATION,
    # The outside world: Postgres, SQS, Whop, tokens.
    "whop": ADAPTERS, "whop_mapping": ADAPTERS, "whop_retries": ADAPTERS, "whop_client": ADAPTERS,
    "db": ADAPTERS, "db_pool": ADAPTERS, "tenancy": ADAPTERS, "store": ADAPTERS, "store.*": ADAPTERS,
    "erasure": ADAPTERS, "clock": ADAPTERS, "queue": ADAPTERS, "auth": ADAPTERS, "ratelimit": ADAPTERS,
    # Read by every layer; imports only libraries and each other.
    "config": FOUNDATION, "database_url": FOUNDATION, "observability": FOUNDATION, "errors": FOUNDATION,
}
# What each layer may import, besides itself. The Whop port (whop.py: WhopPort, its value types
# and failure_cause) imports no chalicelib module; the domain may use its types.
ALLOWED: dict[str, set[str]] = {
    DOMAIN: set(),
    APPLICATION: {DOMAIN, ADAPTERS, FOUNDATION},
    ADAPTERS: {DOMAIN, FOUNDATION},
    FOUNDATION: set(),
}
DOMAIN_MAY_IMPORT = {"whop"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(tree: ast.AST, name: str, known: Iterable[str]) -> set[str]:
    """The chalicelib modules a module's source imports, wherever the import statement is."""
    known = set(known)

    def resolve(dotted: str) -> str | None:
        while dotted and dotted not in known:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    package = name if (PACKAGE / name.replace(".", "/") / "__init__.py").exists() else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package
                parent = package.split(".") if package else []
                parent = parent[:len(parent) - (node.level - 1)] if node.level > 1 else parent
                base = ".".join(["chalicelib", *parent, *([base] if base else [])])
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for target in targets:
            if target == "chalicelib" or not target.startswith("chalicelib."):
                continue
            module = resolve(target.removeprefix("chalicelib."))
            if module is not None and module != name:
                found.add(module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(ast.parse(path.read_text()), name, known) for name, path in known.items()}


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Strongly connected components of two or more modules (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def layer(name: str) -> str | None:
    if name in LAYERS:
        return LAYERS[name]
    package = name.rpartition(".")[0]
    while package:
        if f"{package}.*" in LAYERS:
            return LAYERS[f"{package}.*"]
        package = package.rpartition(".")[0]
    return None


# --- the checks ---------------------------------------------------------------------------------------


def test_no_two_chalicelib_modules_import_each_other() -> None:
    assert cycles(import_graph()) == []


def test_no_chalicelib_module_is_over_450_lines() -> None:
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_every_module_has_a_layer_in_the_module_map() -> None:
    assert [name for name in modules() if name and layer(name) is None] == []
    assert [name for name in LAYERS if not name.endswith(".*") and name not in modules()] == []


def test_each_layer_imports_only_what_the_module_map_allows() -> None:
    wrong = {}
    for name, targets in import_graph().items():
        own = layer(name)
        if own is None:
            continue
        allowed = ALLOWED[own] | {own}
        bad = sorted(t for t in targets if layer(t) not in allowed
                     and not (own == DOMAIN and t in DOMAIN_MAY_IMPORT))
        if bad:
            wrong[name] = bad
    assert wrong == {}


def test_the_domain_imports_no_adapter_and_no_io_library() -> None:
    io = ("pg8000", "httpx", "boto3", "botocore", "chalice", "whop_sdk", "aws_lambda_powertools", "socket",
          "urllib.request", "requests", "ssl")
    found = {}
    for name, path in modules().items():
        if layer(name) != DOMAIN:
            continue
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        bad = sorted(m for m in names if m.split(".")[0] in io or m in io)
        if bad:
            found[name] = bad
    assert found == {}


# --- the checks see what they must (a broken checker would pass everything) ---------------------------


def test_the_import_reader_sees_lazy_and_type_checking_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "import chalicelib.db\n"
        "from chalicelib import config\n"
        "from chalicelib.store import cases as case_store\n"
        "if TYPE_CHECKING:\n    from chalicelib.effects import Claim\n"
        "def f():\n    from chalicelib.whop_client import get_whop\n"
        "    import os\n"
    )
    known = {"db", "config", "store", "store.cases", "effects", "whop_client", "processing"}
    assert imported(ast.parse(source), "processing", known) == {"db", "config", "store", "store.cases",
                                                                 "effects", "whop_client"}


@pytest.mark.parametrize(("graph", "expected"), [
    ({"a": {"b"}, "b": {"a"}}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, [["a", "b", "c"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_the_cycle_finder_finds_cycles_of_any_length(graph: dict[str, set[str]],
                                                     expected: list[list[str]]) -> None:
    assert cycles(graph) == expected


def test_the_layer_check_would_catch_the_domain_reaching_for_the_database() -> None:
    assert layer("store.cases") == ADAPTERS and layer("api.schemas.cases") == APPLICATION
    assert layer("cases") == DOMAIN and ADAPTERS not in ALLOWED[DOMAIN]
    assert APPLICATION not in ALLOWED[ADAPTERS]
