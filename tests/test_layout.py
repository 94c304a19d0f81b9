"""The package layout is the architecture: which part may import which.

    errors   the errors every part raises
    wire     the sans-IO wire format: no Twisted, nothing of sockapp but the errors
    app      the application API
    apps     applications on the API (search, kv)
    net      Twisted's side of the wire, shared by servers and clients
    server   protocols, lifecycle, metrics, logs, workers
    client   the client, the load generator, the command line
    tap      the twistd entry points: may use everything
    testing  starting server processes for tests and tools: imports nothing of sockapp

An import that points the other way (or a cycle) fails here, with the line.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "src" / "sockapp"

# Each part and the parts it may import (itself always).
ALLOWED = {
    "wire": {"errors"},
    "errors": set(),
    "app": {"wire", "errors"},
    "apps": {"app", "wire", "errors"},
    "net": {"wire", "errors"},
    "server": {"net", "wire", "app", "apps", "errors"},
    "client": {"net", "wire", "errors", "apps", "__init__"},
    "tap": {"server", "net", "wire", "app", "apps", "errors"},
    "testing": set(),  # server processes for tests and tools: nothing of sockapp
    "__init__": set(),
}


def part(module: str) -> str:
    """'sockapp.net.tls' -> 'net'; 'sockapp.app' -> 'app'; 'sockapp' -> '__init__'."""
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "__init__"


def _from_sockapp(name: str) -> str:
    """``from sockapp import NAME``: a module or package of sockapp, or a name in its ``__init__``."""
    return f"sockapp.{name}" if (ROOT / name).is_dir() or (ROOT / f"{name}.py").is_file() else "sockapp"


def imports(path: Path, module: str) -> list[tuple[int, str]]:
    """Every sockapp module ``path`` (the module ``module``) imports, at any depth (lazy and relative imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = importlib.util.resolve_name("." * node.level + (node.module or ""), package)
            names = [base] if base != "sockapp" else [_from_sockapp(a.name) for a in node.names]
            found += [(node.lineno, name) for name in names if name.split(".")[0] == "sockapp"]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "sockapp"]
    return found


def test_every_part_imports_only_the_parts_below_it():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(relative.parts).removesuffix(".__init__")
        here = part(module)
        assert here in ALLOWED, f"{path}: a new part? add it to ALLOWED and to the README's tree"
        for line, target in imports(path, module):
            there = part(target)
            if there != here and there not in ALLOWED[here]:
                wrong.append(f"{path.relative_to(ROOT.parent)}:{line}: {here} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_the_allowed_imports_have_no_cycle():
    def visit(name: str, trail: tuple[str, ...]) -> None:
        assert name not in trail, " -> ".join((*trail, name))
        for below in ALLOWED[name]:
            visit(below, (*trail, name))

    for name in ALLOWED:
        visit(name, ())


def test_the_wire_format_loads_without_twisted():
    code = "import sys, sockapp.wire; print(sorted({m.split('.')[0] for m in sys.modules} & {'twisted', 'zope'}))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "[]", result.stderr


def test_relative_imports_are_seen_too(tmp_path: Path):
    source = tmp_path / "framing.py"
    source.write_text("def f():\n    from ..tap import _listen\n    from .. import server\n    from . import text\n")
    assert imports(source, "sockapp.wire.framing") == [
        (2, "sockapp.tap"),
        (3, "sockapp.server"),
        (4, "sockapp.wire"),
    ]
