"""Every code block in README.md and docs/*.md runs; docs/api.md is up to date and covers every public name.

One test per block, named ``<file>:<line>:<language>``. Python blocks run as script files in a fresh subprocess
(Lightning's popen launcher re-runs ``sys.argv``, so not ``python -c``), in a temporary directory that links the
repository's top-level entries (``recipes/``, ``benchmarks/``, ``scripts/``, ...) so that the paths the docs show
work, while logs and checkpoints land in the temporary directory. The markers a page may put before a block are
described in ``tests/helpers/docs_blocks.py`` and in ``docs/index.md`` ("How the docs are tested").
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers.docs_blocks import (
    NOT_CODE,
    REPO,
    RUNNABLE,
    Block,
    all_blocks,
    doc_files,
    looks_like_commands,
    shell_script,
)

BLOCK_TIMEOUT = 150  # seconds for one block (a 2-worker fit of the digits recipe takes ~10 s here)
BLOCKS = all_blocks()
CODE_BLOCKS = [b for b in BLOCKS if b.lang not in NOT_CODE]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    bindir = str(Path(sys.executable).parent)
    env["PATH"] = bindir + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["MPLBACKEND"] = "Agg"
    env["PYTHONUNBUFFERED"] = "1"
    env["OMP_NUM_THREADS"] = "1"  # tiny models on a shared machine: one intra-op thread per worker
    env.pop("LIGHTNING_ASYNC_FAULT", None)
    # in-process runs earlier in this session leave Lightning's launch variables behind, with their store still
    # listening on MASTER_PORT: a block must pick its own
    for name in ("LOCAL_RANK", "NODE_RANK", "GLOBAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "GROUP_RANK"):
        env.pop(name, None)
    return env


def _workdir(tmp_path: Path) -> Path:
    """A scratch directory where the repository's top-level entries resolve as in a checkout."""
    for entry in REPO.iterdir():
        if entry.name.startswith(".") or entry.name in ("lightning_logs", "data"):
            continue
        (tmp_path / entry.name).symlink_to(entry)
    return tmp_path


def _run(cmd: list[str], cwd: Path, block: Block) -> subprocess.CompletedProcess[str]:
    # own session, so that a timeout stops the block's whole process tree (launchers start grandchildren)
    with subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        stdin=subprocess.DEVNULL, start_new_session=True,
    ) as popen:
        try:
            stdout, stderr = popen.communicate(timeout=BLOCK_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(popen.pid, signal.SIGKILL)
            popen.communicate()
            pytest.fail(f"{block.id}: the block ran for over {BLOCK_TIMEOUT}s (its processes were killed)")
    proc = subprocess.CompletedProcess(cmd, popen.returncode, stdout, stderr)
    if proc.returncode != 0:
        pytest.fail(
            f"{block.id}: exit code {proc.returncode}\n--- block ---\n{block.text}--- stdout (end) ---\n"
            f"{proc.stdout[-3000:]}\n--- stderr (end) ---\n{proc.stderr[-4000:]}",
            pytrace=False,
        )
    return proc


def _is_recipe(data: object) -> bool:
    return isinstance(data, dict) and ("trainer" in data or "model" in data)


@pytest.mark.timeout(BLOCK_TIMEOUT + 30)
@pytest.mark.parametrize("block", CODE_BLOCKS, ids=[b.id for b in CODE_BLOCKS])
def test_code_block_runs(block: Block, tmp_path: Path) -> None:
    if "skip" in block.markers:
        reason = block.markers["skip"].strip()
        assert re.fullmatch(r"\(.+\)", reason), (
            f"{block.id}: a skip marker needs a reason: <!-- docs-test: skip (why) -->"
        )
        pytest.skip(f"{block.id}: {reason[1:-1]}")
    assert block.lang in RUNNABLE, (
        f"{block.id}: the block has no language the docs test knows ({block.lang!r}). Tag it python, bash, console "
        f"or yaml (it is run), or text (formulas, output, tables: not run)."
    )
    cwd = _workdir(tmp_path)
    if block.lang in ("python", "py"):
        script = cwd / "docs_block.py"
        script.write_text(block.text)
        _run([sys.executable, str(script)], cwd, block)
    elif block.lang in ("bash", "sh", "shell", "console"):
        script = shell_script(block)
        assert script.strip(), f"{block.id}: no command to run"
        _run(["bash", "-euo", "pipefail", "-c", script], cwd, block)
    else:  # yaml
        data = yaml.safe_load(block.text)
        assert data is not None, f"{block.id}: empty YAML"
        if _is_recipe(data):
            config = cwd / "docs_block.yaml"
            config.write_text(block.text)
            proc = _run(
                [sys.executable, "-m", "lightning_async.cli", "fit", "--config", str(config), "--print_config"],
                cwd,
                block,
            )
            assert "trainer:" in proc.stdout


@pytest.mark.parametrize(
    "block",
    [b for b in BLOCKS if b.lang in NOT_CODE and not b.generated],
    ids=[b.id for b in BLOCKS if b.lang in NOT_CODE and not b.generated],
)
def test_text_blocks_hold_no_commands(block: Block) -> None:
    """A ``text`` block is not run, so it must not hide a command that a reader would copy."""
    commands = looks_like_commands(block.text)
    assert not commands, (
        f"{block.id}: this text block holds commands {commands}: tag it bash (it is then run; shorten it with "
        f"<!-- docs-test: args ... --> or skip it with <!-- docs-test: skip (reason) --> if it cannot run here)."
    )


def test_blocks_were_found() -> None:
    names = {b.path.name for b in CODE_BLOCKS}
    assert {"README.md", "quickstart.md", "concepts.md", "strategy.md", "telemetry.md"} <= names


def _gen_api_doc():
    spec = importlib.util.spec_from_file_location("gen_api_doc", REPO / "scripts" / "gen_api_doc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_api_doc_is_up_to_date() -> None:
    # in a fresh interpreter: torch patches `step` into an optimizer class's __dict__ the first time one is built,
    # so rendering inside this session would depend on which tests ran before
    check = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_api_doc.py"), "--check"],
        capture_output=True, text=True, timeout=120, cwd=REPO, env=_env(),
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_api_doc_covers_every_public_name() -> None:
    gen = _gen_api_doc()
    text = (REPO / "docs" / "api.md").read_text()
    required = {
        "lightning_async",
        "lightning_async.optim",
        "lightning_async.testing",
        "lightning_async.cli",
        "lightning_async.callbacks",
        "lightning_async.accelerate",
        "lightning_async.models",
        "lightning_async.data",
        "lightning_async.sim",
    }
    listed = {name for name, _ in gen.MODULES}
    assert required <= listed, f"modules missing from scripts/gen_api_doc.py MODULES: {required - listed}"
    missing = [
        f"{module}.{name}"
        for module in sorted(listed)
        for name in gen.public_names(module)
        if f"### `{module}.{name}`" not in text
    ]
    assert not missing, f"public names without an entry in docs/api.md: {missing}"
    assert not any("._" in module for module in listed), "private modules are not part of the API reference"
    assert "lightning_async._" not in text, "the API reference names a private module"
    # every submodule of lightning_async.sim is a public module of the package: it must be listed too
    import lightning_async.sim

    sim_dir = Path(lightning_async.sim.__file__).parent
    for path in sim_dir.glob("*.py"):
        if not path.stem.startswith("_"):
            assert f"lightning_async.sim.{path.stem}" in listed, (
                f"lightning_async.sim.{path.stem} is not in the reference"
            )


def test_index_links_every_page() -> None:
    index = (REPO / "docs" / "index.md").read_text()
    for path in sorted((REPO / "docs").glob("*.md")):
        if path.name != "index.md":
            assert f"]({path.name}" in index, f"docs/index.md does not link {path.name}"


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        file = target.split("#", 1)[0]
        if file and not (path.parent / file).exists():
            broken.append(target)
    assert not broken, f"{path.relative_to(REPO)}: links to missing files: {broken}"
