"""
The repository's layout, read from its source (ast), not run: imports point one way, dev/, sample_gpt2.py and the
tests -> train_gpt2.py -> llmc/, and no numba function that caches its machine code uses a numba function (or any
other name) of another file, which its cache would not see change. Each check is also run on a small tree written
here that breaks it, so that a check which finds nothing is known to look.
"""

import ast
import os

from tests.helpers import HERE

# What each part of the repository may import of the others (any other module is a library's). conftest.py and
# test_gpt2.py are no one's to import.
PROJECT_MODULES = {"llmc", "train_gpt2", "sample_gpt2", "dev", "tests", "conftest", "test_gpt2"}
MAY_IMPORT = {
    "llmc": {"llmc"},
    "train_gpt2": {"llmc"},
    "sample_gpt2": {"train_gpt2", "llmc"},
    "dev": {"train_gpt2", "llmc", "dev"},
    "tests": {"train_gpt2", "sample_gpt2", "llmc", "dev", "tests"},
}
SKIPPED_DIRECTORIES = {"__pycache__", "build", "dist", "node_modules"}


def python_files(root):
    """Every .py file of the tree (as a path relative to root), but in hidden folders, builds and virtualenvs."""
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = sorted(
            name for name in subdirectories
            if not name.startswith(".") and name not in SKIPPED_DIRECTORIES and not name.endswith(".egg-info")
            and not os.path.exists(os.path.join(directory, name, "pyvenv.cfg")))
        for name in sorted(names):
            if name.endswith(".py"):
                yield os.path.relpath(os.path.join(directory, name), root)


def part_of(path):
    """Which part of the repository a file (relative path) is: llmc, train_gpt2, sample_gpt2, dev, tests."""
    top = path.split(os.sep)[0]
    if top in ("llmc", "dev", "tests"):
        return top
    if path in ("train_gpt2.py", "sample_gpt2.py"):
        return path[:-3]
    if path in ("conftest.py", "test_gpt2.py"):
        return "tests"
    return "other"  # a script of its own at the root: it may import anything but the tests


def parse(root, path):
    with open(os.path.join(root, path), encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def imported_modules(tree, path):
    """(line, the dotted module) for each import anywhere in the file, relative imports resolved."""
    package = path.split(os.sep)[:-1]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            if node.module is None:  # from . import x: each name is a module of the package
                for alias in node.names:
                    yield node.lineno, ".".join(base + [alias.name])
            else:
                yield node.lineno, ".".join(base + [node.module])


def import_violations(root):
    """Every import that runs the wrong way, as 'path:line: part imports module'."""
    violations = []
    for path in python_files(root):
        part = part_of(path)
        allowed = MAY_IMPORT.get(part, PROJECT_MODULES - {"tests", "conftest", "test_gpt2"})
        for line, module in imported_modules(parse(root, path), path):
            top = module.split(".")[0]
            if top in PROJECT_MODULES and top not in allowed:
                violations.append(f"{path}:{line}: {part} imports {module}")
    return sorted(violations)


def sys_modules_uses(root, path):
    """The lines of a file that touch sys.modules (the trainer once registered itself there as train_gpt2, so
    that dev/ could import it while it ran as __main__)."""
    return sorted({node.lineno for node in ast.walk(parse(root, path))
                   if isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name)
                   and node.value.id == "sys"})


def test_imports_point_one_way():
    files = set(python_files(HERE))
    for path in ("train_gpt2.py", "sample_gpt2.py", "conftest.py", "test_gpt2.py", "llmc/cli.py", "dev/bench.py",
                 "dev/data/data_common.py", "tests/helpers.py"):
        assert path.replace("/", os.sep) in files, path
    assert import_violations(HERE) == []
    for path in ("train_gpt2.py", "sample_gpt2.py") + tuple(p for p in python_files(HERE) if part_of(p) == "llmc"):
        assert sys_modules_uses(HERE, path) == [], f"{path} touches sys.modules"


def write_tree(root, files):
    for path, text in files.items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        with open(os.path.join(root, path), "w") as f:
            f.write(text)


def test_the_import_check_finds_each_wrong_direction(tmp_path):
    write_tree(tmp_path, {
        "train_gpt2.py": "from llmc import files\nimport dev.bench\nimport sys\nsys.modules['x'] = sys\n",
        "sample_gpt2.py": "import train_gpt2 as tg\nfrom dev import hf_gpt2\n",
        "llmc/__init__.py": "",
        "llmc/files.py": "import numpy as np\nfrom . import rand\nfrom .rand import XorShift\n",
        "llmc/rand.py": "def f():\n    import train_gpt2\n    from sample_gpt2 import main\n",
        "llmc/cli.py": "from .. import dev\n",
        "dev/__init__.py": "", "dev/data/__init__.py": "",
        "dev/data/common.py": "from llmc.files import GPT2Error\nimport train_gpt2\nfrom . import fineweb\n"
                              "from tests.helpers import HERE\n",
        "tests/__init__.py": "",
        "tests/test_x.py": "import train_gpt2, sample_gpt2, dev.bench, llmc.cli\nfrom tests.helpers import HERE\n"
                           "from conftest import FIXTURE_MODEL\n",
        "conftest.py": "from tests.helpers import HERE\n",
        ".hidden/bad.py": "import conftest\n", "build/lib/llmc/bad.py": "import train_gpt2\n",
    })
    assert import_violations(tmp_path) == [
        "dev/data/common.py:4: dev imports tests.helpers",
        "llmc/cli.py:1: llmc imports dev",
        "llmc/rand.py:2: llmc imports train_gpt2",
        "llmc/rand.py:3: llmc imports sample_gpt2",
        "sample_gpt2.py:2: sample_gpt2 imports dev",
        "tests/test_x.py:3: tests imports conftest",
        "train_gpt2.py:2: train_gpt2 imports dev.bench",
    ]
    assert sys_modules_uses(tmp_path, "train_gpt2.py") == [4]


# numba's cache: a function compiled with cache=True is saved with the machine code of every numba function it calls
# (inlined or linked in) and every global it reads (frozen as a constant), and loaded again as long as the file that
# defines it is unchanged. A change to another file goes unseen: a kernel of train_gpt2.py calling a numba function
# of llmc/ would keep running that function as it was when the kernel was compiled.

NUMBA_FILES = ("train_gpt2.py", "llmc")  # the trainer and what it includes; the tests' and dev/'s are checked too


def numba_decorator_options(node, names):
    """The jit options of a decorator if it is numba's (njit, jit, numba.njit, with or without arguments, or an
    alias such as train_gpt2's `kernel = njit(...)`, also as tg.kernel), else None. `names` maps what the file calls
    numba's decorators and their aliases to their options."""
    call = node if isinstance(node, ast.Call) else None
    target = call.func if call else node
    key = ast.unparse(target)
    if key not in names:
        return None
    options = dict(names[key])
    if call:
        options.update({keyword.arg: keyword.value for keyword in call.keywords if keyword.arg})
    return options


def caches(options):
    value = options.get("cache")
    return isinstance(value, ast.Constant) and value.value is True


class Module:
    """What the cache check needs of one file: its numba decorators and aliases, the names it imports from the
    project, and its numba functions."""

    def __init__(self, root, path, aliases_of):
        self.path, self.tree = path, parse(root, path)
        self.decorators = {}  # name in this file -> options
        self.project_names = {}  # a name bound by an import of a project module -> that module ("llmc.rand.f")
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "numba":
                        for jit in ("njit", "jit"):
                            self.decorators[f"{alias.asname or 'numba'}.{jit}"] = {}
                    elif alias.name.split(".")[0] in PROJECT_MODULES:
                        self.project_names[alias.asname or alias.name.split(".")[0]] = alias.asname and alias.name
            elif isinstance(node, ast.ImportFrom) and node.module:
                for alias in node.names:
                    if node.module == "numba" and alias.name in ("njit", "jit"):
                        self.decorators[alias.asname or alias.name] = {}
                    elif node.level or node.module.split(".")[0] in PROJECT_MODULES:
                        self.project_names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        for name, module in self.project_names.items():  # an imported module's aliases: @tg.kernel
            for alias, options in aliases_of(module or name).items():
                self.decorators[f"{name}.{alias}"] = options
        self.aliases = {}
        for node in self.tree.body:  # kernel = njit(parallel=True, cache=True, ...)
            if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                    and isinstance(node.value, ast.Call)):
                options = numba_decorator_options(node.value, self.decorators)
                if options is not None:
                    self.aliases[node.targets[0].id] = options
        self.decorators.update(self.aliases)
        self.numba_functions = {}  # name -> (node, options)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.FunctionDef):
                for decorator in node.decorator_list:
                    options = numba_decorator_options(decorator, self.decorators)
                    if options is not None:
                        self.numba_functions[node.name] = (node, options)

    def foreign_names(self, function):
        """The names a function reads that another file of the project defines: (line, what it names)."""
        local = {arg.arg for arg in ast.walk(function.args) if isinstance(arg, ast.arg)}
        local |= {node.id for node in ast.walk(function) if isinstance(node, ast.Name)
                  and isinstance(node.ctx, (ast.Store, ast.Del))}
        found = []
        for statement in function.body:
            for node in ast.walk(statement):
                if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in local \
                        and node.id in self.project_names:
                    found.append((node.lineno, self.project_names[node.id] or node.id))
        return found


def numba_cache_violations(root, paths):
    """Every cached numba function of `paths` that reads a name defined in another file of the project."""
    paths = list(paths)
    modules = {}

    def aliases_of(module):  # the numba aliases of a project module, if it is one of the files checked
        path = module.replace(".", os.sep) + ".py"
        if path not in paths and not os.path.exists(os.path.join(root, path)):
            return {}
        if path not in modules:
            modules[path] = None  # against import cycles
            modules[path] = Module(root, path, lambda name: {})
        return modules[path].aliases if modules[path] else {}

    violations = []
    for path in paths:
        module = Module(root, path, aliases_of)
        for name, (function, options) in sorted(module.numba_functions.items()):
            if caches(options):
                for line, foreign in module.foreign_names(function):
                    violations.append(f"{path}:{line}: {name} (cache=True) uses {foreign}")
    return sorted(violations)


def checked_files(root):
    return [path for path in python_files(root)
            if path.split(os.sep)[0] in NUMBA_FILES or part_of(path) in ("tests", "dev", "sample_gpt2")]


def test_no_cached_numba_function_uses_another_file():
    files = checked_files(HERE)
    assert "train_gpt2.py" in files and os.path.join("llmc", "rand.py") in files
    trainer = Module(HERE, "train_gpt2.py", lambda name: {})
    assert {"attention_softmax", "fast_exp", "adamw_kernel", "sample_token"} <= set(trainer.numba_functions)
    assert all(caches(options) for _, options in trainer.numba_functions.values())  # every kernel is cached
    rand = Module(HERE, os.path.join("llmc", "rand.py"), lambda name: {})
    assert set(rand.numba_functions) == {"uniform_from_draws", "box_muller"}
    assert numba_cache_violations(HERE, files) == []


def test_the_numba_cache_check_finds_a_call_into_another_file(tmp_path):
    write_tree(tmp_path, {
        "llmc/__init__.py": "",
        "llmc/rand.py": "from numba import njit\nSCALE = 2.0\n\n@njit(cache=True)\ndef draw(x):\n    return x\n",
        "llmc/other.py": "import numba as nb\nfrom llmc.rand import SCALE, draw\nfrom llmc import rand\n\n"
                         "@nb.njit(cache=True)\ndef uses(x):\n    return draw(x) * SCALE + rand.draw(x)\n\n"
                         "@nb.njit\ndef uncached(x):\n    return draw(x)\n\n"
                         "@nb.njit(cache=True)\ndef shadows(draw):\n    return draw\n",
        "train_gpt2.py": "from numba import njit\nfrom llmc.rand import draw\n"
                         "kernel = njit(parallel=True, cache=True)\n\n@kernel\ndef k(x):\n    return draw(x)\n\n"
                         "def python(x):\n    return draw(x)\n\n@kernel\ndef own(x):\n    return k(x)\n",
        "tests/__init__.py": "",
        "tests/test_k.py": "import numba\nimport train_gpt2 as tg\n\n@tg.kernel\ndef cached(x):\n"
                           "    return tg.k(x)\n\n@numba.njit(parallel=True)\ndef fresh(x):\n    return tg.k(x)\n",
    })
    assert numba_cache_violations(tmp_path, checked_files(tmp_path)) == [
        "llmc/other.py:7: uses (cache=True) uses llmc.rand",
        "llmc/other.py:7: uses (cache=True) uses llmc.rand.SCALE",
        "llmc/other.py:7: uses (cache=True) uses llmc.rand.draw",
        "tests/test_k.py:6: cached (cache=True) uses train_gpt2",
        "train_gpt2.py:7: k (cache=True) uses llmc.rand.draw",
    ]



def test_the_tutorial_keeps_its_budget():
    # issue 21's targets, as python -m dev.tutorial_lines counts them: at most 1,400 lines, at least 85% the core
    # algorithm, and no function of the tutorial over about 60 lines
    from dev import tutorial_lines
    rows, total = tutorial_lines.count()
    core = sum(lines for _, lines, is_core in rows if is_core)
    assert sum(lines for _, lines, _ in rows) == total
    assert total <= tutorial_lines.BUDGET_LINES and core >= tutorial_lines.CORE_SHARE * total, (total, core)
    assert tutorial_lines.main(["--summary"]) == 0
    functions = [node for node in ast.walk(ast.parse(open(tutorial_lines.TUTORIAL).read()))
                 if isinstance(node, ast.FunctionDef)]
    assert len(functions) > 50
    too_long = {f.name: f.end_lineno - f.lineno + 1 for f in functions if f.end_lineno - f.lineno + 1 > 62}
    assert not too_long, too_long
