"""Mutation testing of one module, mutmut-style, fast: one fork per mutant from a process that has torch loaded.

Each mutant changes one operator or constant inside one function or method of the module (== <-> !=, < <-> <=,
> <-> >=, in <-> not in, is <-> is not, and <-> or, not x -> x, + <-> -, * <-> /, // -> /, % -> /,
<< <-> >>, ** -> *, number n -> n + 1, string s -> "XX" s "XX", True <-> False; docstrings and
module-level code are left alone, as mutmut does). The child swaps the mutated bytecode into the live
functions (so every reference to them, in any module, runs the mutant) and runs pytest with ``-x``;
exit 0 means the mutant survived.

    PYTHONPATH=src python tools/mutate.py src/restore_rwkv/ops/dispatch.py restore_rwkv.ops.dispatch \\
        --jobs 2 -- -p no:cacheprovider -q -x tests/ops ...

Prints one line per mutant and a summary; writes nothing into the repository.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib
import os
import signal
import sys
import tempfile
import time
from dataclasses import dataclass

_COMPARE = {ast.Eq: ast.NotEq, ast.NotEq: ast.Eq, ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE,
            ast.GtE: ast.Gt, ast.In: ast.NotIn, ast.NotIn: ast.In, ast.Is: ast.IsNot, ast.IsNot: ast.Is}
_BINARY = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.FloorDiv: ast.Div,
           ast.Mod: ast.Div, ast.LShift: ast.RShift, ast.RShift: ast.LShift, ast.Pow: ast.Mult}


@dataclass
class Mutant:
    index: int
    function: str
    line: int
    description: str
    tree: ast.Module


def _docstrings(tree: ast.Module) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Module)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                ids.add(id(first.value))
    return ids


def _functions(tree: ast.Module):
    """(qualified name, definition) of each top-level function and each method of a top-level class."""
    for top in tree.body:
        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield top.name, top
        elif isinstance(top, ast.ClassDef):
            for member in top.body:
                if isinstance(member, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    yield f"{top.name}.{member.name}", member


def _sites(tree: ast.Module):
    """(function name, node path) of every mutable node inside a top-level function's or a method's body."""
    skip = _docstrings(tree)
    for name, definition in _functions(tree):
        for stmt in definition.body:
            for node in ast.walk(stmt):
                if id(node) in skip or isinstance(node, ast.JoinedStr):
                    continue
                yield name, node


def _variants(node: ast.AST):
    """(description, in-place edit) pairs for ``node``; each edit is applied to a deep copy."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = _COMPARE[type(op)]
                yield f"{type(op).__name__} -> {new.__name__}", lambda n, i=i, new=new: n.ops.__setitem__(i, new())
    elif isinstance(node, ast.BoolOp):
        new = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        new = _BINARY[type(node.op)]
        yield f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool):
            yield f"{value} -> {not value}", lambda n: setattr(n, "value", not n.value)
        elif isinstance(value, (int, float)):
            yield f"{value!r} -> {value + 1!r}", lambda n: setattr(n, "value", n.value + 1)
        elif isinstance(value, str):
            yield f"{value!r} -> 'XX'+..+'XX'", lambda n: setattr(n, "value", "XX" + n.value + "XX")


def mutants(source: str) -> list[Mutant]:
    """Every single-site mutant of ``source``'s functions, in source order."""
    tree = ast.parse(source)
    found = []
    for function, node in _sites(tree):
        for description, edit in _variants(node):
            found.append((function, node, description, edit))
    nodes = [n for _, n in _sites(tree)]
    result = []
    for index, (function, node, description, edit) in enumerate(found):
        # The same node in a fresh copy of the tree, by its position in the walk order.
        fresh = copy.deepcopy(tree)
        edit([n for _, n in _sites(fresh)][nodes.index(node)])
        result.append(Mutant(index, function, node.lineno, description, fresh))
    return result


def _not_removals(source: str, start: int) -> list[Mutant]:
    tree = ast.parse(source)
    sites = list(_sites(tree))
    result = []
    for order, (function, node) in enumerate(sites):
        for field, value in ast.iter_fields(node):
            values = value if isinstance(value, list) else [value]
            for position, child in enumerate(values):
                if isinstance(child, ast.UnaryOp) and isinstance(child.op, ast.Not):
                    fresh = copy.deepcopy(tree)
                    parent = [n for _, n in _sites(fresh)][order]
                    if isinstance(value, list):
                        getattr(parent, field)[position] = getattr(parent, field)[position].operand
                    else:
                        setattr(parent, field, getattr(parent, field).operand)
                    result.append(Mutant(start + len(result), function, child.lineno, "not x -> x", fresh))
    return result


def _plain(member):
    """The function object behind a class member (static/class method, property getter, pydantic
    validator proxy, functools.wraps wrapper), or None."""
    for _ in range(4):
        if isinstance(member, (staticmethod, classmethod)):
            member = member.__func__
        elif isinstance(member, property):
            member = member.fget
        elif hasattr(member, "wrapped") and not hasattr(member, "__code__"):  # pydantic's decorator proxy
            member = member.wrapped
        elif hasattr(member, "__wrapped__"):  # e.g. @torch.no_grad(): the wrapper's closure holds the original
            member = member.__wrapped__
    return member if getattr(member, "__code__", None) is not None else None


def _methods(cls) -> dict:
    """Method name -> function object of ``cls``'s own members, pydantic validators included."""
    found = {name: f for name, f in ((n, _plain(m)) for n, m in vars(cls).items()) if f is not None}
    decorators = getattr(cls, "__pydantic_decorators__", None)
    if decorators is not None:
        for group in ("validators", "field_validators", "model_validators", "field_serializers",
                      "model_serializers", "root_validators", "computed_fields"):
            for name, decorator in getattr(decorators, group, {}).items():
                function = _plain(decorator.func)
                if function is not None:
                    found[name] = function
    return found


def _swap(old, new) -> None:
    old.__code__ = new.__code__
    old.__defaults__ = new.__defaults__
    old.__kwdefaults__ = new.__kwdefaults__


def _install(module, tree: ast.Module) -> None:
    """Swap the mutated functions' and methods' code into ``module``'s live function objects."""
    namespace = {"__name__": module.__name__, "__file__": module.__file__}
    exec(compile(ast.fix_missing_locations(tree), module.__file__, "exec"), namespace)
    for name, new in namespace.items():
        old = getattr(module, name, None)
        if isinstance(new, type) and isinstance(old, type) and new.__module__ == module.__name__:
            old_methods = _methods(old)
            for method, function in _methods(new).items():
                if method in old_methods and old_methods[method] is not function:
                    _swap(old_methods[method], function)
            continue
        if callable(new) and hasattr(new, "__wrapped__") and hasattr(old, "__wrapped__"):
            old.cache_clear() if hasattr(old, "cache_clear") else None
            old, new = old.__wrapped__, new.__wrapped__
        if getattr(new, "__code__", None) is not None and getattr(old, "__code__", None) is not None \
                and getattr(new, "__module__", None) == module.__name__:
            _swap(old, new)


class _CallMap:
    """pytest plugin: which functions of one source file each test calls (setup, call and teardown), and
    which are called outside any test (at collection, e.g. in skipif marks)."""

    COLLECTION = "<collection>"

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        self.current = self.COLLECTION
        self.calls: dict[str, set[str]] = {}
        # A test's forked workers (e.g. gloo ranks started with start_method="fork") inherit this profile
        # hook and run the mutants too; they append their calls to this file, which call_map merges.
        self.pid = os.getpid()
        self.forked_calls = tempfile.NamedTemporaryFile(prefix="mutate-calls-", delete=False).name
        self._forked_seen: set[tuple[int, str, str]] = set()  # (worker pid, function, test) already written

    def _profile(self, frame, event, arg):
        if event == "call" and frame.f_code.co_filename == self.path:
            # "Class.method" for a method; a nested function counts as a call of the function around it
            name = frame.f_code.co_qualname.split(".<locals>")[0]
            self.calls.setdefault(name, set()).add(self.current)
            seen = (os.getpid(), name, self.current)
            if seen[0] != self.pid and seen not in self._forked_seen:
                self._forked_seen.add(seen)
                with open(self.forked_calls, "a") as log:
                    log.write(f"{name}\t{self.current}\n")

    def merged_calls(self) -> dict[str, set[str]]:
        """The calls of this process and of the processes its tests forked."""
        with open(self.forked_calls) as log:
            for line in log:
                name, test = line.rstrip("\n").split("\t")
                self.calls.setdefault(name, set()).add(test)
        os.unlink(self.forked_calls)
        return self.calls

    def pytest_sessionstart(self, session) -> None:
        sys.setprofile(self._profile)

    def pytest_sessionfinish(self, session) -> None:
        sys.setprofile(None)

    import pytest as _pytest

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        self.current = item.nodeid
        yield
        self.current = self.COLLECTION


def call_map(path: str, pytest_args: list[str]) -> dict[str, set[str]]:
    """Function name -> node ids of the tests that call it (``<collection>`` where called outside tests)."""
    import pytest

    plugin = _CallMap(path)
    args = [a for a in pytest_args if a != "-x"]
    try:
        failed = int(pytest.main(args, plugins=[plugin])) != 0
    finally:
        calls = plugin.merged_calls()  # also removes the forked workers' log
    if failed:
        sys.exit("the tests fail without mutations; fix that first")
    return calls


def _selection(pytest_args: list[str], tests: set[str]) -> list[str]:
    """``pytest_args`` with the test paths and -k replaced by the node ids ``tests``."""
    options, previous = [], ""
    for arg in pytest_args:
        if previous == "-p":
            options += ["-p", arg]
        elif arg.startswith("-") and arg not in ("-k", "-p"):
            options.append(arg)
        previous = arg
    return options + sorted(tests)


def _map_in_child(path: str, pytest_args: list[str]) -> dict[str, set[str]]:
    """``call_map`` in a forked child (the parent stays free of test state and threads)."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        try:
            calls = call_map(path, pytest_args)
            os.write(write, repr({k: sorted(v) for k, v in calls.items()}).encode())
            code = 0
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    chunks = []
    while chunk := os.read(read, 1 << 20):
        chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit("the tests fail without mutations; fix that first")
    return {k: set(v) for k, v in ast.literal_eval(b"".join(chunks).decode()).items()}


def _run(module_name: str, mutant: Mutant, pytest_args: list[str]) -> int:
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)
            os.dup2(devnull, 2)
            import pytest

            _install(importlib.import_module(module_name), mutant.tree)
            code = int(pytest.main(list(pytest_args)))
        except BaseException:
            code = 99
        os._exit(code)
    return pid


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("module")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--only", default="", help="comma-separated mutant indices to run")
    parser.add_argument("--calls", default="", help="file to keep the test map in between runs (outside the repo)")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    pytest_args = argv[split + 1 :]
    source = open(args.path).read()
    todo = mutants(source)
    todo += _not_removals(source, len(todo))
    if args.only:
        keep = {int(i) for i in args.only.split(",")}
        todo = [m for m in todo if m.index in keep]
    importlib.import_module(args.module)  # load torch and the package once, before forking
    # A clean run in a child maps each function to the tests that call it; a mutant then runs only
    # those (all of them where the function is called at collection). The outcome is the same as
    # running every test, since a test that never calls a function cannot see its mutant.
    if args.calls and os.path.exists(args.calls):
        calls = {k: set(v) for k, v in ast.literal_eval(open(args.calls).read()).items()}
    else:
        calls = _map_in_child(args.path, pytest_args)
        if args.calls:
            with open(args.calls, "w") as fh:
                fh.write(repr({k: sorted(v) for k, v in calls.items()}))
    print(f"{len(todo)} mutants of {args.path}", flush=True)
    running: dict[int, tuple[Mutant, float]] = {}
    survived, killed, timeouts = [], 0, 0
    queue = list(todo)
    while queue or running:
        while queue and len(running) < args.jobs:
            mutant = queue.pop(0)
            tests = calls.get(mutant.function, set())
            if not tests:
                survived.append(mutant)
                print(f"#{mutant.index} SURVIVED (no test calls it) {mutant.function}:{mutant.line} "
                      f"{mutant.description}", flush=True)
                continue
            selection = pytest_args if _CallMap.COLLECTION in tests else _selection(pytest_args, tests)
            running[_run(args.module, mutant, selection)] = (mutant, time.monotonic())
        time.sleep(0.05)
        for pid, (mutant, started) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                if time.monotonic() - started > args.timeout:
                    os.killpg(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                    del running[pid]
                    timeouts += 1
                    print(f"#{mutant.index} TIMEOUT {mutant.function}:{mutant.line} {mutant.description}", flush=True)
                continue
            del running[pid]
            code = os.waitstatus_to_exitcode(status)
            if code in (4, 5):  # pytest usage error or nothing collected: a fault of this tool's call
                print(f"#{mutant.index} ERROR({code}) {mutant.function}:{mutant.line} {mutant.description}",
                      flush=True)
                continue
            if code == 0:
                survived.append(mutant)
                print(f"#{mutant.index} SURVIVED {mutant.function}:{mutant.line} {mutant.description}", flush=True)
            else:
                killed += 1
                print(f"#{mutant.index} killed({code}) {mutant.function}:{mutant.line} {mutant.description}",
                      flush=True)
    print(f"total {len(todo)}: killed {killed}, timed out {timeouts}, survived {len(survived)}", flush=True)


if __name__ == "__main__":
    main()
