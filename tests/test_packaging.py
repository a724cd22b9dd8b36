"""pyproject.toml's dependency floors are the versions the suite was run with (.ci/minimum-versions.txt)."""
import re
import tomllib

from helpers import REPO


def _floors() -> dict:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in project["dependencies"]:
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", requirement)
        if match:
            floors[match.group(1).lower()] = match.group(2)
    return floors


def test_every_pinned_minimum_is_a_floor_in_pyproject():
    pins = {}
    for line in (REPO / ".ci/minimum-versions.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.strip().lower()] = version.strip()
    floors = _floors()
    assert {"jax", "flax", "optax", "orbax-checkpoint", "tensorflow-datasets"} <= set(pins)
    for name, version in pins.items():
        assert floors.get(name) == version, f"pyproject.toml's floor for {name} is {floors.get(name)}, pinned {version}"
