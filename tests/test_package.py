"""The package's shape: its import graph has no cycle, and every command the docs show
is a valid command of today's CLI."""

import ast
import os
import re
import shlex
import sys

import pytest
from conftest import REPO

from kt_transfer import config_files, validate

PACKAGE = os.path.join(REPO, "kt_transfer")


def _module_name(path):
    relative = os.path.relpath(path, REPO)[: -len(".py")].replace(os.sep, ".")
    return relative[: -len(".__init__")] if relative.endswith(".__init__") else relative


def import_graph():
    """{module: {kt_transfer modules it imports}}, read from the source (every import
    statement, also those inside functions)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                modules[_module_name(path)] = path
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(open(path).read())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
            else:
                continue
            targets |= {n for n in names if n in modules and n != "kt_transfer"}
        graph[module] = targets - {module}
    return graph


def find_cycle(graph):
    """One import cycle as a list of modules, or None."""
    state = {}

    def visit(module, path):
        state[module] = "open"
        for target in sorted(graph.get(module, ())):
            if state.get(target) == "open":
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target, path + [target])
                if cycle:
                    return cycle
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state:
            cycle = visit(module, [module])
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    assert "kt_transfer.runs.experiment" in graph  # the graph was read
    assert "kt_transfer.networks.transfer" in graph["kt_transfer.runs.experiment"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def documented_commands():
    """Every `python -m kt_transfer.main` / `kt-transfer` command in README.md and docs/:
    (file, argument list)."""
    files = [os.path.join(REPO, "README.md")] + sorted(
        os.path.join(folder, name)
        for folder, _, names in os.walk(os.path.join(REPO, "docs"))
        for name in names
        if name.endswith(".md")
    )
    found = []
    pattern = re.compile(r"(?:python -m kt_transfer\.main|(?<![\w-])kt-transfer)((?: [^\n`|]*)?)")
    for path in files:
        for line in open(path).read().replace("\\\n", " ").splitlines():  # "\\" continues
            for match in pattern.finditer(line):
                arguments = shlex.split(match.group(1).split(" #")[0])
                found.append((os.path.relpath(path, REPO), arguments))
    return found


def _override(config, key, text):
    """Sets config.<key> from a command-line string, typed as the config's value is."""
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node[part]
    current = node[leaf]
    if isinstance(current, bool):
        value = text.lower() in ("true", "1")
    elif isinstance(current, (int, float)) and not isinstance(current, bool):
        value = type(current)(float(text)) if isinstance(current, int) else float(text)
    elif isinstance(current, (tuple, list)):
        value = tuple(ast.literal_eval(text))
    else:
        value = text
    node[leaf] = value


def config_of(arguments, tmp_path):
    """The config a documented command resolves to. Paths that point at a user's own data
    or models are replaced by stand-ins here (a folder, a base file), so the rest of the
    command is what is checked."""
    config_file = next((a.split("=", 1)[1] for a in arguments if a.startswith("--config=")), None)
    config = config_files.load(os.path.join(REPO, config_file) if config_file else "embedded")
    shortcuts = {"--mode": "mode", "--n": "n", "--workdir": "workdir", "--base_model": "base_model"}
    config.workdir = str(tmp_path / "workdir")
    for argument in arguments:
        flag, _, value = argument.partition("=")
        if flag in shortcuts:
            key = shortcuts[flag]
            if key == "n":
                value = int(value)
            elif key == "workdir":
                value = str(tmp_path / "workdir")
            elif key == "base_model":
                value = str(tmp_path / "base.keras")
            config[key] = value
        elif flag.startswith("--config."):
            key = flag[len("--config.") :]
            if key in ("dataset.data_dir", "source_dataset.data_dir"):
                value = str(tmp_path / "data")
            _override(config, key, value)
        elif flag not in ("--config", "--verbosity", "--traceback", "--helpfull", "--help"):
            raise AssertionError(f"unknown flag {flag!r}")
    return config


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 10 and any(f == "README.md" for f, _ in COMMANDS)


@pytest.mark.parametrize(
    "where,arguments", COMMANDS, ids=[f"{f}:{' '.join(a)[:60]}" for f, a in COMMANDS]
)
def test_every_documented_command_passes_config_validation(
    where, arguments, tmp_path, monkeypatch, request
):
    """Through validate.validate, the check the CLI runs before any work."""
    os.makedirs(tmp_path / "data" / "train")
    os.makedirs(tmp_path / "data" / "val")
    import zipfile

    with zipfile.ZipFile(tmp_path / "base.keras", "w") as archive:
        archive.writestr("config.json", "{}")
    monkeypatch.setenv(
        "TF_CONFIG",
        '{"cluster": {"worker": ["localhost:1"]}, "task": {"type": "worker", "index": 0}}',
    )
    _write_readme_modules(tmp_path, monkeypatch)  # e.g. my_network.py, for model.network
    config = config_of(arguments, tmp_path)
    if config.model.keras_hub.preset:  # a keras-hub preset of the user's: a real one
        preset = request.getfixturevalue("hub_presets")[0]["converter"]
        config.model.keras_hub.preset = preset
        if config.base_model:
            config.base_model = preset
    validate.validate(config)


def _write_readme_modules(directory, monkeypatch):
    """README's Python files (a block opening with `# <name>.py`), importable as modules."""
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    for code, name in re.findall(r"```python\n(# (\w+)\.py.*?)```", text, re.S):
        (directory / f"{name}.py").write_text(code)
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(directory))


def _called_names(node):
    names = set()
    for call in (n for n in ast.walk(node) if isinstance(n, ast.Call)):
        if isinstance(call.func, ast.Name):
            names.add(call.func.id)
        elif isinstance(call.func, ast.Attribute):
            owner = call.func.value
            prefix = f"{owner.id}." if isinstance(owner, ast.Name) else "."
            names.add(prefix + call.func.attr)
    return names


SPAWNING_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.check_output", "run_cli"}


def _tests_that_start_processes(path):
    """{test name: marked slow?} of the tests in `path` that start a subprocess, directly
    or through a helper function of their module (or conftest's run_cli). Mounting a
    small filesystem (`mount`) does not count: it starts no Python."""
    tree = ast.parse(open(path).read())
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    spawning = set(SPAWNING_CALLS)
    grew = True
    while grew:
        grew = False
        for name, function in functions.items():
            if not name.startswith("test_") and name not in spawning:
                if _called_names(function) & spawning:
                    spawning.add(name)
                    grew = True
    found = {}
    for name, function in functions.items():
        if name.startswith("test_"):
            source = ast.unparse(function)
            only_mount = (
                "mount" in source and "run_cli" not in source and "sys.executable" not in source
            )
            if _called_names(function) & spawning and not only_mount:
                found[name] = any("slow" in ast.unparse(d) for d in function.decorator_list)
    return found


def test_every_test_that_starts_a_process_is_marked_slow():
    """The quick tier (`pytest -m "not slow"`) runs in-process only."""
    tests_dir = os.path.join(REPO, "tests")
    unmarked, spawning = [], 0
    for name in sorted(os.listdir(tests_dir)):
        if name.startswith("test_") and name.endswith(".py"):
            found = _tests_that_start_processes(os.path.join(tests_dir, name))
            spawning += len(found)
            unmarked += [f"{name}::{test}" for test, slow in found.items() if not slow]
    assert spawning >= 20  # the check sees them
    assert not unmarked, unmarked
