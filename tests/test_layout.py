"""The README's layout diagram is the real import order: no layer imports one drawn after it."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "salience_bench"


def _layers() -> list[str]:
    text = (ROOT / "README.md").read_text()
    diagram = text[text.index("## Layout"):].splitlines()[2]
    return [name.strip().rstrip("/") for name in diagram.split("→")]


def _imports(path: Path) -> set[str]:
    """The top-level salience_bench modules or packages that one module imports (relative or absolute)."""
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(parts[:-1])[: len(parts) - node.level] if node.level > 1 else list(parts[:-1])
                target = base + (node.module.split(".") if node.module else [])
                found |= {target[0]} if target else {alias.name.split(".")[0] for alias in node.names}
            elif node.module and node.module.startswith("salience_bench."):
                found.add(node.module.split(".")[1])
    return found


def test_no_layer_imports_a_later_one():
    layers = _layers()
    assert len(layers) >= 8 and all(re.fullmatch(r"[a-z_]+", layer) for layer in layers), layers
    position = {layer: i for i, layer in enumerate(layers)}
    against = []
    for path in PACKAGE.rglob("*.py"):
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own not in position:
            continue
        for target in _imports(path) & set(position):
            if position[target] > position[own]:
                against.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not against, against
