"""The per-agency mapping files (allow-lists of what leaves the hub) that ship with the hub.

Only the YAML files here matter; this file makes the folder a package so the wheel carries
them and ``hub.settings`` finds them through importlib.resources. An operator replaces the
whole folder with ``MAPPINGS_DIR`` (docs/decisions/0010-packaging-and-production-settings.md).
"""
