"""Registries and routing (hub/registry.py) against the real registry/ folder, and the
10-working-day information duty over Greek national and local holidays."""

from __future__ import annotations

import shutil
from datetime import date
from pathlib import Path

import holidays
import pytest

from hub.errors import ConfigurationError, RoutingError
from hub.registry import Centre, Registry
from hub.settings import packaged_dir
from schemas.codes import ProgrammeCode as P

REGISTRY_DIR = packaged_dir("registry")


@pytest.fixture(scope="module")
def registry() -> Registry:
    return Registry.load(REGISTRY_DIR)


def with_centre(base: Registry, centre: Centre) -> Registry:
    return Registry(
        [*base.centres.values(), centre],
        list(base.agencies.values()),
        list(base.programmes.values()),
    )


# --------------------------------------------------------------------------- loading


def test_real_registry_loads_the_sample_centres_and_agencies(registry: Registry) -> None:
    assert set(registry.centres) == {
        "KK-KOZANI",
        "KK-EORDAIA",
        "KK-KASTORIA",
        "KK-FLORINA",
        "KK-GREVENA",
        "KK-KARPENISI",
    }
    assert list(registry.agencies) == [
        "opeka",
        "dypa",
        "kozani-social-grocery",
        "kozani-social-service",
        "karpenisi-social-service",
        "kozani-lifelong-learning",
    ]
    assert set(registry.programmes) == set(P)
    assert "dypa" in [a.id for a in registry.active_agencies]


# --------------------------------------------------------------------------- routing


def test_employment_programmes_route_to_dypa_once(registry: Registry) -> None:
    assert registry.route("KK-KOZANI", [P.UNEMPLOYMENT_REGISTRATION, P.JOB_COUNSELLING]) == ["dypa"]


def test_unknown_centre_is_a_routing_error_on_centre(registry: Registry) -> None:
    with pytest.raises(RoutingError) as caught:
        registry.route("KK-ATLANTIS", [P.JOB_COUNSELLING])
    assert caught.value.field == "centre"
    assert "KK-ATLANTIS" in str(caught.value)


def test_programme_of_an_inactive_agency_is_refused(registry: Registry) -> None:
    without_opeka = Registry(
        list(registry.centres.values()),
        [a.model_copy(update={"active": a.id != "opeka"}) for a in registry.agencies.values()],
        list(registry.programmes.values()),
    )
    with pytest.raises(RoutingError) as caught:
        without_opeka.route("KK-KOZANI", [P.GMI])
    assert caught.value.field == "programmes.0"
    # Names the programme and the municipality, and nothing about a person.
    assert str(caught.value) == "no agency handles GMI in municipality kozani"


def test_routing_error_points_at_the_first_unserved_programme(registry: Registry) -> None:
    with pytest.raises(RoutingError) as caught:
        registry.route(
            "KK-GREVENA", [P.UNEMPLOYMENT_REGISTRATION, P.SOCIAL_GROCERY, P.HELP_AT_HOME]
        )
    assert caught.value.field == "programmes.1"
    assert str(caught.value) == "no agency handles SOCIAL_GROCERY in municipality grevena"


def test_all_four_families_once_every_agency_is_active(registry: Registry) -> None:
    active = Registry(
        list(registry.centres.values()),
        [a.model_copy(update={"active": True}) for a in registry.agencies.values()],
        list(registry.programmes.values()),
    )
    programmes = [P.HELP_AT_HOME, P.GMI, P.UNEMPLOYMENT_REGISTRATION, P.SOCIAL_GROCERY]
    # Registry order, not request order.
    assert active.route("KK-KOZANI", programmes) == [
        "opeka",
        "dypa",
        "kozani-social-grocery",
        "kozani-social-service",
    ]
    assert active.route("KK-KARPENISI", [P.HELP_AT_HOME]) == ["karpenisi-social-service"]
    with pytest.raises(RoutingError) as caught:  # Florina has no municipal agency on file
        active.route("KK-FLORINA", [P.GMI, P.SOCIAL_GROCERY])
    assert caught.value.field == "programmes.1"
    assert str(caught.value) == "no agency handles SOCIAL_GROCERY in municipality florina"


def test_routing_by_residence_and_never_back_to_the_referring_agency(registry: Registry) -> None:
    """The municipality of residence when the registry knows it (a centre's or one an agency
    names), else the centre's; the referring agency is left out, and a programme only it
    serves is refused by index with a message saying so."""
    assert registry.routing_municipality("KK-KOZANI", "karpenisi") == "karpenisi"
    assert registry.routing_municipality("KK-KOZANI", "eordaia") == "eordaia"
    assert registry.routing_municipality("KK-KOZANI", "atlantis") == "kozani"
    assert registry.routing_municipality("KK-KOZANI", None) == "kozani"
    assert "*" not in registry.municipalities
    assert registry.route("KK-KOZANI", [P.HELP_AT_HOME], municipality="karpenisi") == [
        "karpenisi-social-service"
    ]
    assert registry.route("KK-KOZANI", [P.GMI, P.SOCIAL_GROCERY], origin="dypa") == [
        "opeka",
        "kozani-social-grocery",
    ]
    with pytest.raises(RoutingError) as caught:
        registry.route("KK-KOZANI", [P.JOB_COUNSELLING, P.GMI], origin="opeka")
    assert caught.value.field == "programmes.1"
    assert str(caught.value) == (
        "only opeka, the referring agency, handles GMI in municipality kozani: "
        "a referral is never routed back to its origin"
    )


# --------------------------------------------------------------------------- information due


def test_information_due_skips_christmas_new_year_and_epiphany(registry: Registry) -> None:
    # From Tue 2026-12-22, working days: 23 (1), 24 (2); 25 Christmas, 26-27 weekend;
    # 28 (3), 29 (4), 30 (5), 31 (6); 1 Jan New Year, 2-3 weekend; 4 (7), 5 (8);
    # 6 Epiphany; 7 (9), Fri 8 Jan (10).
    assert registry.information_due("KK-KOZANI", date(2026, 12, 22)) == date(2027, 1, 8)


def test_information_due_crosses_orthodox_easter_2027(registry: Registry) -> None:
    gr = holidays.country_holidays("GR", years=2027)
    assert date(2027, 4, 30) in gr  # Good Friday
    assert date(2027, 5, 3) in gr  # Easter Monday
    assert date(2027, 5, 4) in gr  # Labour Day (Sat 1 May) moved to Tuesday
    assert date(2027, 4, 29) not in gr
    # From Mon 2027-04-26: 27 (1), 28 (2), 29 (3); Fri 30 Good Friday, 1-2 May weekend,
    # Mon 3 Easter Monday, Tue 4 Labour Day moved; 5 (4), 6 (5), 7 (6), 10 (7), 11 (8),
    # 12 (9), Thu 13 May (10).
    assert registry.information_due("KK-KOZANI", date(2027, 4, 26)) == date(2027, 5, 13)


def test_information_due_on_an_ordinary_fortnight(registry: Registry) -> None:
    # Mon 2026-11-02 + 10 working days = Mon 2026-11-16 (two plain weeks).
    assert registry.information_due("KK-KOZANI", date(2026, 11, 2)) == date(2026, 11, 16)


def test_local_feast_day_pushes_the_date_one_more_day(registry: Registry) -> None:
    centre = Centre(
        code="KK-TEST", name_el="Κέντρο Δοκιμών", municipality="kozani", local_holidays=["12-23"]
    )
    custom = with_centre(registry, centre)
    # As the Christmas case, but Wed 23 Dec is closed: Fri 8 Jan becomes working day 9,
    # so the 10th is Mon 11 Jan.
    assert custom.information_due("KK-TEST", date(2026, 12, 22)) == date(2027, 1, 11)
    # The shared calendar is not polluted: Kozani itself is unchanged.
    assert custom.information_due("KK-KOZANI", date(2026, 12, 22)) == date(2027, 1, 8)


def test_extra_closure_pushes_the_date(registry: Registry) -> None:
    centre = Centre(
        code="KK-TEST",
        name_el="Κέντρο Δοκιμών",
        municipality="kozani",
        extra_closures=[date(2026, 11, 10)],
    )
    custom = with_centre(registry, centre)
    assert custom.information_due("KK-TEST", date(2026, 11, 2)) == date(2026, 11, 17)


# --------------------------------------------------------------------------- malformed files


@pytest.fixture
def registry_copy(tmp_path: Path) -> Path:
    target = tmp_path / "registry"
    shutil.copytree(REGISTRY_DIR, target)
    return target


def test_malformed_centre_entry_names_file_and_index(registry_copy: Path) -> None:
    path = registry_copy / "centres.yaml"
    path.write_text(
        path.read_text(encoding="utf-8") + "- code: KK-BROKEN\n  name_el: Χωρίς δήμο\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigurationError) as caught:
        Registry.load(registry_copy)
    message = str(caught.value)
    assert str(path) in message
    assert "entry 6" in message
    assert "municipality" in message


def test_malformed_agency_entry_names_file_and_index(registry_copy: Path) -> None:
    path = registry_copy / "agencies.yaml"
    text = path.read_text(encoding="utf-8").replace("id: dypa", "id: DYPA!", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError) as caught:
        Registry.load(registry_copy)
    message = str(caught.value)
    assert "agencies.yaml: entry 1: id:" in message


def test_unknown_programme_code_in_agency_is_refused(registry_copy: Path) -> None:
    path = registry_copy / "agencies.yaml"
    text = path.read_text(encoding="utf-8").replace("JOB_COUNSELLING,", "JOB_COUNSELING,", 1)
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigurationError, match=r"agencies\.yaml: entry 1: programmes\.1"):
        Registry.load(registry_copy)


def test_registry_file_that_is_not_a_list_is_refused(registry_copy: Path) -> None:
    (registry_copy / "programmes.yaml").write_text("GMI: Ελάχιστο Εγγυημένο Εισόδημα\n")
    with pytest.raises(ConfigurationError, match=r"programmes\.yaml: expected a list"):
        Registry.load(registry_copy)


def test_programme_registry_missing_a_code_is_refused(registry: Registry) -> None:
    programmes = [p for p in registry.programmes.values() if p.code != P.GMI]
    with pytest.raises(ConfigurationError, match=r"programme registry lacks .*GMI"):
        Registry(list(registry.centres.values()), list(registry.agencies.values()), programmes)
