"""The package's import surface, checked in a fresh interpreter (an already-imported submodule would hide a bug)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(120)


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=110)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_subpackages_are_attributes_of_the_package():
    out = _run(
        "import lightning_async\n"
        "print(lightning_async.optim.AsyncAdagrad.__name__, lightning_async.data.DigitsDataModule.__name__,"
        " lightning_async.models.MLPClassifier.__name__)"
    )
    assert out == "AsyncAdagrad DigitsDataModule MLPClassifier"


def test_subpackages_load_lazily():
    out = _run(
        "import sys, lightning_async\n"
        "print(sorted(m for m in ('lightning_async.data', 'lightning_async.models', 'lightning_async.sim')"
        " if m in sys.modules))"
    )
    assert out == "[]"


def test_unknown_attribute_still_raises():
    out = _run(
        "import lightning_async\n"
        "try:\n    lightning_async.nope\nexcept AttributeError as e:\n    print(e)"
    )
    assert out == "module 'lightning_async' has no attribute 'nope'"


def test_dir_lists_the_subpackages():
    out = _run("import lightning_async; print('optim' in dir(lightning_async), 'data' in dir(lightning_async))")
    assert out == "True True"
