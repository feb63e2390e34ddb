"""The sample registry (centres, agencies, programmes) that ships with the hub, as data.

Only the YAML files here matter; this file makes the folder a package so the wheel carries
them and ``hub.settings`` finds them through importlib.resources. An operator replaces the
whole folder with ``REGISTRY_DIR`` (docs/decisions/0010-packaging-and-production-settings.md).
"""
