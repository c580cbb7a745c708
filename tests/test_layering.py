"""The floors of docs/ARCHITECTURE.md §1, checked over the source: every import in
tfquant/ (at module level or inside a function) goes to its own floor or one below, and
no set of modules imports itself in a circle."""

import ast
import re
import pathlib

import pytest

PACKAGE_DIR = pathlib.Path(__file__).resolve().parent.parent / "tfquant"

# Lower floors first; a module imports only from its floor and the floors before it.
FLOORS = (
    ("tfquant.ops",),
    ("tfquant.quantizers",),
    ("tfquant.keras",),
    ("tfquant.ptq", "tfquant.export", "tfquant.regularizers"),
    ("tfquant.callbacks", "tfquant.report"),
    ("tfquant.cli",),
)


def module_names():
    """{dotted module name: path} for every .py file and compiled extension in tfquant/."""
    names = {}
    for path in PACKAGE_DIR.rglob("*"):
        if path.suffix not in (".py", ".so") or "__pycache__" in path.parts:
            continue
        parts = list(path.relative_to(PACKAGE_DIR.parent).parts)
        parts[-1] = parts[-1].split(".")[0]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def imported_modules(name, path, known):
    """The tfquant modules that module `name` (at `path`) imports, anywhere in its body."""
    if path.suffix != ".py":
        return set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            # `from package import module` imports the module; `from module import name`
            # imports the module.
            submodules = {f"{source}.{alias.name}" for alias in node.names} & set(known)
            found.update(submodules or {source})
    # A module's own package runs first anyway; importing it is not a dependency.
    return {other for other in found
            if other in known and other != name and not name.startswith(other + ".")}


def floor_of(name):
    for level, packages in enumerate(FLOORS):
        if any(name == package or name.startswith(package + ".") for package in packages):
            return level
    return None


@pytest.fixture(scope="module")
def import_graph():
    known = module_names()
    return {name: imported_modules(name, path, known) for name, path in known.items()}


def test_every_module_has_a_floor(import_graph):
    # The top-level package (the public API) and the compiled extensions stand outside.
    floorless = [name for name in import_graph if floor_of(name) is None
                 and name != "tfquant" and not name.startswith("tfquant._")]
    assert floorless == [], f"modules with no floor in docs/ARCHITECTURE.md §1: {floorless}"


def test_no_import_goes_up_a_floor(import_graph):
    upward = sorted(
        f"{name} (floor {floor_of(name)}) imports {other} (floor {floor_of(other)})"
        for name, others in import_graph.items() if floor_of(name) is not None
        for other in others
        if floor_of(other) is not None and floor_of(other) > floor_of(name))
    assert upward == []


def find_cycle(graph):
    """One import cycle of `graph` as a list of modules, or None."""
    state = {}

    def visit(name, path):
        state[name] = "open"
        for other in sorted(graph.get(name, ())):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other, path + [other])
                if cycle:
                    return cycle
        state[name] = "done"
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name, [name])
            if cycle:
                return cycle
    return None


def test_no_import_cycle(import_graph):
    # The top-level package imports everything to export the public API.
    graph = {name: others - {"tfquant"} for name, others in import_graph.items()
             if name != "tfquant"}
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_checks_see_a_cycle_and_an_upward_import():
    graph = {"tfquant.keras.a": {"tfquant.keras.b"}, "tfquant.keras.b": {"tfquant.keras.a"}}
    assert find_cycle(graph) == ["tfquant.keras.a", "tfquant.keras.b", "tfquant.keras.a"]
    assert floor_of("tfquant.keras.config") < floor_of("tfquant.ptq.quantize")


def architecture_sections():
    """The section numbers of docs/ARCHITECTURE.md: "2" for "## 2. …", "3.1" for the
    first numbered item of section 3."""
    text = (PACKAGE_DIR.parent / "docs" / "ARCHITECTURE.md").read_text()
    sections, current = set(), None
    for line in text.splitlines():
        heading = re.match(r"## (\d+)\. ", line)
        item = re.match(r"(\d+)\. \*\*", line)
        if heading:
            current = heading.group(1)
            sections.add(current)
        elif item and current:
            sections.add(f"{current}.{item.group(1)}")
    return sections


def test_every_design_citation_resolves_to_the_architecture_page():
    root = PACKAGE_DIR.parent
    sources = [p for folder in ("tfquant", "cc_ops", "benchmarks", "examples", "tests")
               for p in (root / folder).rglob("*") if p.suffix in (".py", ".cc", ".h")]
    sections = architecture_sections()
    assert {"1", "2", "3", "3.1", "4"} <= sections
    unresolved, stale = [], []
    for path in sources:
        text = path.read_text(errors="replace")
        for cited in re.findall(r"ARCHITECTURE\.md ?§\s*(\d+(?:\.\d+)?)", text):
            if cited not in sections:
                unresolved.append(f"{path.relative_to(root)}: §{cited}")
        if path.name != "test_layering.py" and re.search(r"DESIGN\.md|\bdecision \d", text):
            stale.append(str(path.relative_to(root)))
    assert unresolved == [] and stale == []
