"""``python -m hub``: the ``diasyndesi`` command where its console script is not installed."""

from hub.cli import app

app(prog_name="diasyndesi")
