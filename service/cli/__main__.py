"""``python -m service.cli``: the ``plasticity`` command line."""

from service.cli.main import app

app()
