"""The package layers (docs/architecture.md): a component imports only components below it.

Imports are read statically from the source, lazy imports inside functions included, so a
cycle cannot hide behind a function-level `import`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src" / "obelisk"

# Lowest first. Components in one tuple share a layer and may not import one another.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),
    ("tpm",),
    ("signer",),
    ("ima_policy", "kernel_hardening", "cis_checks", "disk", "reports"),
    ("image",),
    ("attest",),
    ("fleet",),
    ("lab",),
    ("cli",),
)
RANK = {name: level for level, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every import in the file, relative ones resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.append((node.lineno, target))
            # `from obelisk import image` imports the component itself
            if target == "obelisk":
                found += [(node.lineno, f"obelisk.{alias.name}") for alias in node.names
                          if (SRC / alias.name).is_dir()]
    return found


def component_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "obelisk" else None


def violations() -> list[str]:
    out = []
    for path in sorted(SRC.rglob("*.py")):
        here = component_of(_module_name(path))
        if here is None or here == "__main__":
            continue
        for line, target in imports_of(path):
            there = component_of(target)
            if there is None or there == here or there == "__init__":
                continue
            if there not in RANK:
                out.append(f"{path.relative_to(SRC.parent)}:{line}: {target} is in no layer")
            elif here not in RANK:
                out.append(f"{path.relative_to(SRC.parent)}: component {here} is in no layer")
            elif RANK[there] >= RANK[here]:
                out.append(f"{path.relative_to(SRC.parent)}:{line}: {here} imports {target} "
                           f"({'same layer' if RANK[there] == RANK[here] else 'a layer above'})")
    return out


def test_every_component_has_a_layer():
    components = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert components == set(RANK), f"add to LAYERS: {sorted(components - set(RANK))}; " \
                                    f"gone: {sorted(set(RANK) - components)}"


def test_no_component_imports_one_above_it():
    assert violations() == []


def test_argparse_only_in_cli():
    users = [str(p.relative_to(SRC.parent)) for p in SRC.rglob("*.py")
             if component_of(_module_name(p)) != "cli" and any(t == "argparse" for _, t in imports_of(p))]
    assert users == []


@pytest.mark.parametrize("source, expected", [
    ("import obelisk.cli.main\n", "obelisk.cli.main"),
    ("def f():\n    from obelisk.lab import boot\n", "obelisk.lab"),
    ("from ..attest import verify\n", "obelisk.attest"),
])
def test_the_checker_sees_lazy_and_relative_imports(tmp_path, source, expected):
    """The checker itself: a lazy or relative import of an upper layer is found."""
    fake = SRC / "tpm" / "_layer_probe.py"
    try:
        fake.write_text(source)
        assert (1 if source.startswith(("import", "from")) else 2, expected) in imports_of(fake)
        assert any("tpm/_layer_probe.py" in v for v in violations())
    finally:
        fake.unlink()
