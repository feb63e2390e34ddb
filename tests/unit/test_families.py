"""Families are discovered through the ``diasyndesi.families`` entry points; a broken plugin
stops start-up with a message naming its package and what is wrong (decision 0014)."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ConfigDict

from diasyndesi_sdk.connection import AgencyConnection
from diasyndesi_sdk.family import FamilySpec, discover_families
from diasyndesi_sdk.sandbox import Sandbox
from hub.errors import ConfigurationError
from hub.factory import build_connector
from hub.families import check_registry_families, installed_families
from hub.registry import Agency, Registry
from hub.settings import Settings

GROUP = "diasyndesi.test_families"


@pytest.fixture
def plugins(tmp_path: Path) -> Iterator[Path]:
    """A folder on sys.path where tests install fake distributions and modules."""
    sys.path.insert(0, str(tmp_path))
    try:
        yield tmp_path
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m.startswith("fake_family")]:
            del sys.modules[name]


def install(folder: Path, dist: str, entries: dict[str, str], module: str = "") -> None:
    info = folder / f"{dist}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entries.items())
    (info / "entry_points.txt").write_text(f"[{GROUP}]\n{lines}")
    if module:
        (folder / f"{dist.replace('-', '_')}.py").write_text(module)


def test_the_installed_families_are_complete_and_load() -> None:
    families = installed_families()
    assert {
        "benefits_agency",
        "employment_service",
        "social_grocery",
        "municipal_social_service",
    } <= set(families)
    for spec in families.values():
        assert spec.problems() == []
        assert spec.load_connector().__name__.endswith("Connector")
        assert isinstance(spec.load_sandbox(), Sandbox)
    assert families["benefits_agency"].status == "poll"
    assert families["benefits_agency"].minimisation.afm
    assert not families["social_grocery"].minimisation.afm


def test_a_good_plugin_is_discovered(plugins: Path) -> None:
    install(
        plugins,
        "fake-family-good",
        {"good": "fake_family_good:FAMILY"},
        "from diasyndesi_sdk.family import FamilySpec\n"
        "FAMILY = FamilySpec(name='good', connector='fake_family_good:Nothing')\n",
    )
    assert discover_families(GROUP)["good"].connector == "fake_family_good:Nothing"


def test_a_plugin_that_fails_to_import_names_its_package(plugins: Path) -> None:
    install(plugins, "fake-family-broken", {"broken": "fake_family_broken:FAMILY"}, "1/0\n")
    with pytest.raises(ConfigurationError) as caught:
        discover_families(GROUP)
    message = str(caught.value)
    assert "family plugin 'broken'" in message
    assert "package fake-family-broken 1.0" in message
    assert "ZeroDivisionError" in message


def test_an_incomplete_spec_names_what_is_missing(plugins: Path) -> None:
    install(
        plugins,
        "fake-family-partial",
        {"partial": "fake_family_partial:FAMILY"},
        "from diasyndesi_sdk.family import FamilySpec\n"
        "FAMILY = FamilySpec(name='partial', connector='', status='sometimes')\n",
    )
    with pytest.raises(ConfigurationError) as caught:
        discover_families(GROUP)
    assert "package fake-family-partial 1.0" in str(caught.value)
    assert "connector ('module:Class')" in str(caught.value)
    assert "status (one of push, poll, both)" in str(caught.value)


def test_something_else_than_a_spec_is_refused(plugins: Path) -> None:
    install(
        plugins,
        "fake-family-dict",
        {"dict": "fake_family_dict:FAMILY"},
        "FAMILY = {'name': 'dict', 'connector': 'x:Y'}\n",
    )
    with pytest.raises(ConfigurationError, match=r"is not a FamilySpec \(a dict; missing "):
        discover_families(GROUP)


def test_a_spec_under_another_name_is_refused(plugins: Path) -> None:
    install(
        plugins,
        "fake-family-named",
        {"alias": "fake_family_named:FAMILY"},
        "from diasyndesi_sdk.family import FamilySpec\n"
        "FAMILY = FamilySpec(name='real', connector='fake_family_named:C')\n",
    )
    with pytest.raises(ConfigurationError, match="the spec is named 'real', not 'alias'"):
        discover_families(GROUP)


def test_a_connector_target_that_is_not_a_connector(plugins: Path) -> None:
    spec = FamilySpec(name="odd", connector="pathlib:Path")
    with pytest.raises(ConfigurationError, match="pathlib:Path is not a Connector subclass"):
        spec.load_connector()
    missing = FamilySpec(name="odd", connector="no_such_module_here:C")
    with pytest.raises(ConfigurationError, match="cannot import no_such_module_here"):
        missing.load_connector()


def registry_with(family: str, *, active: bool) -> Registry:
    base = Registry.load(Settings().registry_dir)
    stranger = Agency(
        id="stranger",
        name_el="Άγνωστη",
        name_en="Stranger",
        family=family,
        active=active,
        programmes=[],
        municipalities=["kozani"],
        mapping="dypa.yaml",
    )
    return Registry(
        list(base.centres.values()),
        [*base.agencies.values(), stranger],
        list(base.programmes.values()),
    )


def test_an_active_agency_of_an_uninstalled_family_stops_start_up() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_registry_families(registry_with("carrier_pigeon", active=True))
    assert "agency stranger" in str(caught.value)
    assert "family 'carrier_pigeon' is not installed" in str(caught.value)
    check_registry_families(registry_with("carrier_pigeon", active=False))  # inactive: fine


def test_or_is_reported_inactive_if_so_configured() -> None:
    registry = check_registry_families(registry_with("carrier_pigeon", active=True), "inactive")
    assert registry.agencies["stranger"].active is False
    assert "stranger" not in {a.id for a in registry.active_agencies}
    assert registry.agencies["dypa"].active  # the others untouched
    assert Settings(missing_family="inactive").missing_family == "inactive"


class StrictConnection(AgencyConnection):
    model_config = ConfigDict(extra="forbid")
    tenant: str


def test_a_family_validates_its_own_connection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = installed_families()["employment_service"]
    strict = FamilySpec(
        name=spec.name, connector=spec.connector, connection=StrictConnection, status="push"
    )
    monkeypatch.setitem(installed_families(), "employment_service", strict)
    dypa = Registry.load(Settings().registry_dir).agencies["dypa"]
    settings = Settings(agencies={"dypa": AgencyConnection(base_url="http://127.0.0.1:1")})
    with pytest.raises(ConfigurationError, match=r"AGENCIES__DYPA__TENANT: Field required"):
        build_connector(dypa, settings)
    settings = Settings(
        agencies={"dypa": AgencyConnection(base_url="http://127.0.0.1:1", tenant="t")}  # type: ignore[call-arg]
    )
    assert build_connector(dypa, settings).connection.tenant == "t"  # type: ignore[attr-defined]


def test_up_with_an_uninstalled_family_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hub.cli import app
    from hub.settings import packaged_dir

    registry = tmp_path / "registry"
    shutil.copytree(packaged_dir("registry"), registry)
    with (registry / "agencies.yaml").open("a", encoding="utf-8") as agencies:
        agencies.write(
            "- {id: pigeons, name_el: Περιστέρια, name_en: Pigeons, family: carrier_pigeon,"
            " programmes: [GMI], municipalities: [kozani], mapping: opeka.yaml}\n"
        )
    monkeypatch.setenv("REGISTRY_DIR", str(registry))
    monkeypatch.setenv("VAR_DIR", str(tmp_path / "var"))
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 2
    assert result.output.count("\n") == 1, result.output  # one line, no traceback
    assert "agency pigeons: agency family 'carrier_pigeon' is not installed" in result.output
    assert not (tmp_path / "var").exists()  # refused before anything started
