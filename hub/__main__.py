"""``python -m hub``: the ``diasyndesi`` command where its console script is not installed."""

from hub.entry import main

main()
