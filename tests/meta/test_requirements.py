"""What users install is what the tests run.

`pip install -e .` installs requirements.txt's ranges (their newest versions); the test
oracles (requirements-test.txt: transformers, torch, matplotlib, ...) declare their own ranges
for some of the same packages. If an oracle's range is narrower, installing the test
requirements silently swaps the version (transformers 4.57 took huggingface_hub from 2.x down
to 0.36) and the tests exercise a version users never get. Checked here:

1. every version requirements.txt allows is one each installed oracle accepts (over every
   release number near the bounds of both ranges);
2. the installed version of every runtime package is inside requirements.txt's range;
3. in CI (.ci/run sets NUMPY_GPT2_RUNTIME_FREEZE to `pip freeze` taken right after
   `pip install -e .`), installing the test requirements changed none of the packages
   requirements.txt names (the ones numpy_gpt2 imports). Their own dependencies may move:
   TransformerLens' `datasets` pins fsspec lower than huggingface_hub's newest, and no code
   of numpy_gpt2 reaches fsspec.
"""

from __future__ import annotations

import importlib.metadata
import os
import re

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from helpers import REPO_ROOT

ROOT = REPO_ROOT


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(name: str) -> list[Requirement]:
    out = []
    with open(os.path.join(ROOT, name), encoding="utf-8") as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if line and not line.startswith("-"):
                out.append(Requirement(line))
    return out


RUNTIME = {canonical(r.name): r for r in read_requirements("requirements.txt")}
ORACLES = [canonical(r.name) for r in read_requirements("requirements-test.txt")]


def candidate_versions(*specifier_sets: SpecifierSet) -> list[Version]:
    """Release numbers on and around every bound of the given ranges (the places where two
    ranges can differ), plus a spread of ordinary ones."""
    versions = {Version(f"{a}.{b}.{c}") for a in range(4) for b in (0, 1, 5, 10, 17, 25, 50, 99)
                for c in (0, 1)}
    for specs in specifier_sets:
        for spec in specs:
            v = Version(spec.version.replace("*", "0"))
            major, minor, micro = (list(v.release) + [0, 0])[:3]
            for delta in (-1, 0, 1):
                versions |= {Version(f"{max(major + delta, 0)}.0.0"),
                             Version(f"{major}.{max(minor + delta, 0)}.0"),
                             Version(f"{major}.{minor}.{max(micro + delta, 0)}"),
                             Version(f"{major}.{minor}.{micro}.post1")}
    return sorted(versions)


def oracle_requirements():
    """(oracle, its requirement on a runtime package) for every installed oracle."""
    pairs = []
    for oracle in ORACLES:
        try:
            requires = importlib.metadata.requires(oracle) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue  # an optional extra of the oracle, not installed by the pin
            if canonical(req.name) in RUNTIME:
                pairs.append((oracle, req))
    return pairs


def test_the_oracles_are_installed_and_constrain_a_runtime_package():
    """Guards the test below against checking nothing."""
    pairs = oracle_requirements()
    assert {"transformers"} <= {o for o, _ in pairs}
    assert "huggingface-hub" in {canonical(r.name) for o, r in pairs if o == "transformers"}


@pytest.mark.parametrize("oracle, req", oracle_requirements(), ids=str)
def test_every_version_users_can_get_is_one_the_oracle_accepts(oracle, req):
    ours = RUNTIME[canonical(req.name)].specifier
    outside = [v for v in candidate_versions(ours, req.specifier)
               if ours.contains(v, prereleases=False) and not req.specifier.contains(v, prereleases=False)]
    assert not outside, (f"requirements.txt allows {req.name} {outside[:3]}, which {oracle} "
                         f"({req}) does not: installing the test requirements would change it")


@pytest.mark.parametrize("name", sorted(RUNTIME))
def test_installed_runtime_versions_are_inside_requirements_txt(name):
    installed = importlib.metadata.version(name)
    assert RUNTIME[name].specifier.contains(installed, prereleases=True), \
        f"{name} {installed} is installed, but requirements.txt says {RUNTIME[name]}"


def test_installing_the_test_requirements_changed_no_runtime_version():
    path = os.environ.get("NUMPY_GPT2_RUNTIME_FREEZE")
    if not path:
        pytest.skip("NUMPY_GPT2_RUNTIME_FREEZE is not set (.ci/run sets it to `pip freeze` "
                    "taken after `pip install -e .`)")
    changed = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            name, sep, version = line.strip().partition("==")
            if not sep or canonical(name) not in RUNTIME:
                continue  # "-e ...", a direct reference, or a package numpy_gpt2 does not import
            try:
                now = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                changed.append(f"{name} {version} -> uninstalled")
                continue
            if Version(now) != Version(version):
                changed.append(f"{name} {version} -> {now}")
    assert not changed, f"installing requirements-test.txt changed: {', '.join(changed)}"
