"""deploy/prometheus.yml scrapes every process: serve, and one worker per active agency on
the workers' default observability port."""

from __future__ import annotations

from pathlib import Path

import yaml

from hub.registry import Registry
from hub.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


def test_prometheus_scrapes_serve_and_a_worker_per_agency() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert {job["metrics_path"] for job in jobs.values()} == {"/metrics"}
    [serve] = jobs["diasyndesi-serve"]["static_configs"]
    assert serve["targets"] == [f"hub:{Settings().api_port}"]
    port = Settings().observability_port
    workers = {
        group["labels"]["agency"]: group["targets"]
        for group in jobs["diasyndesi-worker"]["static_configs"]
    }
    agencies = {a.id for a in Registry.load(ROOT / "registry").active_agencies}
    assert workers == {agency: [f"worker-{agency}:{port}"] for agency in agencies}
