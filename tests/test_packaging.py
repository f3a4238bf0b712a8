"""Installed as a user installs it, without the source tree: build the wheel and the sdist, install the wheel into
a fresh virtual environment, and use it from a folder outside the checkout.

The fresh environment gets the already-installed dependencies (torch, lightning, ...) through a path entry, not
through their ``.pth`` files, so the checkout's editable install is invisible to it: what runs is the wheel.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import tarfile
import venv
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(400)]


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    dist = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [sys.executable, "-m", "hatchling", "build", "-d", str(dist)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return {"wheel": next(dist.glob("*.whl")), "sdist": next(dist.glob("*.tar.gz"))}


@pytest.fixture(scope="module")
def installed(built, tmp_path_factory) -> Path:
    """A fresh venv with the wheel installed; returns its ``bin`` folder."""
    root = tmp_path_factory.mktemp("venv")
    venv.EnvBuilder(with_pip=True).create(root)
    python = root / "bin" / "python"
    site = Path(subprocess.check_output(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True).strip())
    (site / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(built["wheel"])],
        capture_output=True, text=True, timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return root / "bin"


def _run(bin_dir: Path, *args: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([*args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                            env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(cwd)})
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    return result


def test_the_wheel_and_sdist_hold_the_package_and_the_recipes(built):
    wheel = set(zipfile.ZipFile(built["wheel"]).namelist())
    for name in ("lightning_async/__init__.py", "lightning_async/recipes/digits_mlp/base.yaml",
                 "lightning_async/recipes/text_gpt/adam.yaml", "lightning_async_autoload.pth"):
        assert name in wheel, name
    assert not any(n.startswith("tests/") for n in wheel)
    with tarfile.open(built["sdist"]) as sdist:
        names = {n.split("/", 1)[1] for n in sdist.getnames() if "/" in n}
    for name in ("pyproject.toml", "README.md", "recipes/digits_mlp/base.yaml", "lightning_async/cli.py",
                 "tests/test_packaging.py"):
        assert name in names, name


def test_the_installed_wheel_runs_outside_the_checkout(installed, tmp_path):
    python = str(installed / "python")
    where = _run(installed, python, "-c", "import lightning_async; print(lightning_async.__file__)", cwd=tmp_path)
    assert str(REPO) not in where.stdout and "site-packages" in where.stdout  # the wheel, not the checkout
    # the strategy name resolves without importing the package (the wheel's .pth registers it)
    registered = _run(installed, python, "-c",
                      "import sys; from lightning.pytorch.strategies import StrategyRegistry; "
                      "print('async_adaptive' in StrategyRegistry, 'lightning_async' in sys.modules)", cwd=tmp_path)
    assert registered.stdout.split()[0] == "True"
    cli = str(installed / "lightning-async")
    assert "lightning_async 0.1.0" in " ".join(_run(installed, cli, "--help", cwd=tmp_path).stdout.split())
    listing = _run(installed, cli, "recipes", cwd=tmp_path).stdout
    folder = Path(listing.splitlines()[0].removeprefix("recipes in "))
    assert folder.parent.name == "lightning_async" and "site-packages" in str(folder)
    base = folder / "digits_mlp" / "base.yaml"
    fit = _run(installed, cli, "fit", "--config", str(base), "--config", str(folder / "digits_mlp" / "adagrad.yaml"),
               "--trainer.devices=1", "--trainer.max_epochs=1", "--trainer.limit_train_batches=3",
               "--trainer.limit_val_batches=2", "--trainer.logger=false", "--trainer.enable_checkpointing=false",
               "--trainer.enable_progress_bar=false", cwd=tmp_path)
    assert "lightning_async: 1 worker, engine 'shared_memory'" in fit.stdout + fit.stderr
