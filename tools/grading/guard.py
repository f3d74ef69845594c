"""Notices graded code that replaces what the tests rely on: torch.allclose, pytest's internals, a test helper.

Student code runs in the same Python process as the tests, so it could make a wrong answer pass by
replacing, say, `torch.allclose` with `lambda *a, **k: True`, or pytest's report maker with one that always
says "passed". Before the first student import, the plugin takes a snapshot of every function, class and
module held by the watched modules (and the methods of the classes they define); after each test it
checks that each entry is still the same object and that no class gained an attribute (one that would
shadow an inherited method, like `torch.Tensor.allclose`). A replaced, deleted or added entry fails the
test, and every later test in that process, with a reason that names it.
This catches monkeypatching; it cannot stop code that sets out to rewrite the interpreter's memory (the
threat model in tools/grade.py says what is and is not covered).
"""
import sys
import types

# Module names; "x.*" means x and every submodule of x already imported when the snapshot is taken.
WATCHED = (
    "builtins", "math", "operator", "functools", "copy", "numpy", "numpy.testing", "numpy.testing.*",
    "torch", "torch.nn.functional", "torch.testing", "torch.testing.*",
    "pytest", "_pytest.*", "pluggy", "pluggy.*",
    "conftest", "tests.*", "training.*", "loss.*", "tools.grading.*",
)
PUBLIC_ONLY = ("torch", "numpy")  # in these exact modules only names without a leading underscore
EXTRA_CLASSES = ("torch.Tensor",)  # classes whose methods are watched although defined elsewhere
# Rebindings that torch itself makes lazily (importing torch._dynamo, which the first optimizer step does,
# wraps torch.manual_seed). Accepted only when the new object is torch's own wrapper around the old one.
TORCH_REBINDS = ("torch.manual_seed",)
ADDED_BY_PYTHON = {"__slotnames__"}  # copy/pickle cache this on a class the first time they copy an instance
_MISSING = object()
_KEYS = object()  # the attribute of an entry that stands for "the set of names in this class"


def _is_watched(name: str) -> bool:
    for pattern in WATCHED:
        if name == pattern or (pattern.endswith(".*") and (name + ".").startswith(pattern[:-1])):
            return True
    return False


def _tracked(value) -> bool:
    return callable(value) or isinstance(value, (types.ModuleType, staticmethod, classmethod, property))


def snapshot() -> list[tuple[str, object, str, object]]:
    """[(label, namespace, attribute, value)] for everything the guard watches. The namespace is the live
    __dict__ of the module or class (a class's mappingproxy follows later changes too)."""
    entries = []
    extra = {f"{cls.__module__}.{cls.__qualname__}" for cls in _extra_classes()}
    for module_name, module in sorted((n, m) for n, m in list(sys.modules.items()) if m is not None):
        if not _is_watched(module_name):
            continue
        public_only = module_name in PUBLIC_ONLY
        for attr, value in list(vars(module).items()):
            if (public_only and attr.startswith("_")) or not _tracked(value):
                continue
            entries.append((f"{module_name}.{attr}", vars(module), attr, value))
            if isinstance(value, type) and (value.__module__ == module_name or
                                            f"{value.__module__}.{value.__qualname__}" in extra):
                entries += [(f"{module_name}.{attr}.{name}", vars(value), name, member)
                            for name, member in list(vars(value).items()) if _tracked(member)]
                # and no new attribute (`torch.Tensor.allclose = ...` would shadow the inherited method)
                entries.append((f"{module_name}.{attr}", vars(value), _KEYS, frozenset(vars(value))))
    return entries


def _extra_classes():
    for dotted in EXTRA_CLASSES:
        module_name, _, attr = dotted.rpartition(".")
        cls = getattr(sys.modules.get(module_name), attr, None)
        if cls is not None:
            yield cls


def _torch_wrapper(new, old) -> bool:
    code = getattr(new, "__code__", None)
    torch_folder = getattr(sys.modules.get("torch"), "__file__", "").rsplit("/", 1)[0] + "/"
    return getattr(new, "__wrapped__", None) is old and code is not None and \
        code.co_filename.startswith(torch_folder)


def first_change(entries) -> str | None:
    """The label of the first watched entry that is no longer the same object, or None."""
    for label, namespace, attr, value in entries:
        if attr is _KEYS:
            added = sorted(set(namespace) - value - ADDED_BY_PYTHON) if len(namespace) != len(value) else []
            if added:
                return f"{label}.{added[0]}"
            continue
        now = namespace.get(attr, _MISSING)
        if now is not value and not (label in TORCH_REBINDS and _torch_wrapper(now, value)):
            return label
    return None
