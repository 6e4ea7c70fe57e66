"""What a pip-installed mafalda-sfu carries: the wheel holds the worker's build recipe
(so ``mafalda build-worker`` works without the repository), the C extension and the
pages; ``mafalda build-worker`` runs that recipe."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from mafalda import cli
from mafalda.mediasoup.worker_binary import build_script, cached_worker_bin

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "mafalda"


def test_the_wheel_carries_the_worker_recipe_and_the_pages(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr.decode()
    [wheel] = tmp_path.glob("mafalda_sfu-*.whl")
    unpacked = tmp_path / "unpacked"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        archive.extractall(unpacked)
    recipe = build_script().parent
    files = {str(path.relative_to(PACKAGE.parent)) for path in recipe.rglob("*") if path.is_file()}
    assert "mafalda/mediasoup/worker_build/build-worker.sh" in files
    assert len(files) >= 10  # the script, the stub subprojects and the libsrtp shim
    assert files <= names, files - names
    for needed in ("mafalda/py.typed", "mafalda/monitor/page.html"):
        assert needed in names
    assert "mafalda/demo/static/index.html" in names
    assert any(n.startswith("mafalda/mediasoup/_cfastfbs.") and n.endswith(".so") for n in names)
    # The unpacked recipe is the very one that built the cached worker (the recipe's
    # fingerprint covers the script and every support file): it answers with that
    # binary at once instead of building another.
    answered = subprocess.run(
        ["bash", str(unpacked / "mafalda/mediasoup/worker_build/build-worker.sh")],
        capture_output=True,
        timeout=60,
    )
    assert answered.returncode == 0, answered.stderr.decode()
    assert answered.stdout.decode().strip() == str(cached_worker_bin())


def test_build_worker_command(capfd: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["build-worker"]) == 0  # built already: the path, at once
    assert capfd.readouterr().out.strip() == str(cached_worker_bin())
    with pytest.raises(SystemExit) as usage:
        cli.main(["build-worker", "--fast"])
    assert usage.value.code == 2
    assert "unrecognized arguments: --fast" in capfd.readouterr().err


def test_build_worker_command_without_bash(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")  # a machine without bash, for real
    assert cli.main(["build-worker"]) == 1
    assert "cannot run the worker's build recipe" in capfd.readouterr().err


def test_the_repository_script_runs_the_packaged_recipe() -> None:
    """scripts/build-worker.sh (what setup.sh runs) hands over to the packaged recipe."""
    answered = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-worker.sh"), "--bogus"],
        capture_output=True,
        timeout=60,
    )
    assert answered.returncode == 2
    assert "build-worker.sh: unknown argument: --bogus" in answered.stderr.decode()
    helped = subprocess.run(
        ["bash", str(ROOT / "scripts" / "build-worker.sh"), "--help"],
        capture_output=True,
        timeout=60,
    )
    assert helped.returncode == 0 and "--force" in helped.stdout.decode()
