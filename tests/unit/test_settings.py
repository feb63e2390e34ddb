"""Settings from the environment, as operators set them."""

from __future__ import annotations

import pytest

from connectors.sandbox_kit import FaultKnobs
from hub.embedded import _merge_connections
from hub.settings import AgencyConnection, Settings


def test_agency_ids_with_hyphens_come_from_underscored_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("AGENCIES__KOZANI_SOCIAL_GROCERY__BASE_URL", "http://grocery.example")
    monkeypatch.setenv("AGENCIES__KOZANI_SOCIAL_GROCERY__SECRET", "k3y-" + "x" * 20)
    settings = Settings()
    connection = settings.agencies["kozani-social-grocery"]
    assert connection.base_url == "http://grocery.example"
    assert connection.secret.get_secret_value().startswith("k3y-")
    assert "k3y-" not in repr(settings)  # secrets never show in reprs or logs


def test_placeholder_secrets_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENCIES__DYPA__SECRET", "changeme")
    with pytest.raises(ValueError, match="placeholder"):
        Settings()


def test_an_override_changes_only_what_it_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENCIES__DYPA__BASE_URL", "http://127.0.0.1:9999")
    sandboxes = {"dypa": AgencyConnection(base_url="http://127.0.0.1:8102", secret="s" * 24)}
    merged = _merge_connections(sandboxes, Settings())
    assert merged["dypa"].base_url == "http://127.0.0.1:9999"
    assert merged["dypa"].secret.get_secret_value() == "s" * 24


def test_sandbox_fault_knobs_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "SANDBOX_FAIL_RATE": "0.2",
        "SANDBOX_LATENCY_MS": "50",
        "SANDBOX_OUTAGE_S": "30",
        "SANDBOX_HANG": "false",
        "SANDBOX_STATUS": "429",
    }.items():
        monkeypatch.setenv(name, value)
    knobs = FaultKnobs.from_env()
    assert (knobs.fail_rate, knobs.latency_ms, knobs.outage_s, knobs.hang, knobs.status) == (
        0.2,
        50,
        30.0,
        False,
        429,
    )
