"""Loading a script of the repository (``benchmarks/NAME.py``, ``examples/NAME.py``) as a module,
for the tests that run it end to end."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative: str):
    """The module of ``ROOT/relative`` (executed once per call)."""
    path = ROOT / relative
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
