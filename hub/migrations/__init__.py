"""Alembic revisions of the hub's schema (``diasyndesi db upgrade``); run by ``hub.schema``."""
