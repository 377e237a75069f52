"""The installed package: one top-level import name (`smscast`), every module importable from the wheel alone, and
the deployments' entrypoints loadable from it.

flows/, tasks/, providers/, sandbox/ and servers/ sit at the repository's top level but install as subpackages of
smscast (pyproject.toml), so a Prefect user's own `flows` or `tasks` package is never shadowed by ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("flows", "tasks", "providers", "sandbox", "servers")

# Run inside the wheel's install folder, from a folder that is not the checkout: every module of the package is
# imported (a stray `from tasks.x import …` fails here, since no top-level `tasks` exists), then each entrypoint of
# deployments/prefect.yaml is loaded the way a Prefect worker loads it.
IMPORT_ALL = """
import importlib, json, pkgutil, sys
import smscast
from prefect.flows import load_flow_from_entrypoint
modules = [m.name for m in pkgutil.walk_packages(smscast.__path__, "smscast.")]
for name in modules:
    importlib.import_module(name)
flows = {e: load_flow_from_entrypoint(e).name for e in json.loads(sys.argv[1])}
stray = sorted(n for n in sys.modules if n.split(".")[0] in {"flows", "tasks", "providers", "sandbox", "servers"})
print(json.dumps({"file": smscast.__file__, "modules": modules, "flows": flows, "stray": stray}))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", str(ROOT), "-w", str(out)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (built,) = out.glob("smscast-*.whl")
    return built


def test_the_wheel_installs_one_top_level_package(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level_txt,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        declared = z.read(top_level_txt).decode().split()
    roots = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert roots == {"smscast"}
    assert declared == ["smscast"]
    for sub in SUBPACKAGES:
        # The linked folders are real files in the wheel, not links.
        assert f"smscast/{sub}/__init__.py" in names


def test_every_module_and_entrypoint_loads_from_the_installed_wheel(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    deployments = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())["deployments"]
    entrypoints = sorted({d["entrypoint"] for d in deployments})
    env = {**os.environ, "PYTHONPATH": str(target)}
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_ALL, json.dumps(entrypoints)],
        cwd=tmp_path,  # not the checkout: nothing may come from the repository's folders
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(found["file"]).is_relative_to(target)
    assert found["stray"] == []
    for sub in SUBPACKAGES:
        assert f"smscast.{sub}" in found["modules"]
    assert "smscast.providers.robase" in found["modules"]
    assert len(entrypoints) >= 4
    assert set(found["flows"]) == set(entrypoints)


def test_the_repository_imports_nothing_by_its_top_level_folder_names() -> None:
    """Inside the checkout the folders are importable by their bare names too (pytest puts the root on the path),
    so the wheel test alone would miss a test or benchmark that imports `tasks.x`."""
    offenders = []
    for path in [*ROOT.glob("tests/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("deployments/*.py")]:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            words = line.strip().split()
            if len(words) >= 2 and words[0] in {"from", "import"} and words[1].split(".")[0] in SUBPACKAGES:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert offenders == []
