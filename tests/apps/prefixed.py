"""An app that sets graph_key_prefix itself (for the --key-prefix agreement check)."""

from tests.apps.common import app_from_env

app = app_from_env()
app.conf.graph_key_prefix = "cgops:fixed"
