"""Turnout: an event-sourced LLM request router (Kafka in, OpenAI-compatible upstreams out).

The distribution installs this one package. Its parts keep the repository's top-level
folders as their sources (`turnout/service`, `turnout/analytics` and
`turnout/dashboards` are links to them; a wheel holds the files themselves):

- `turnout.service`: the router (a pure core and its Kafka/HTTP shell), the gateway,
  the simulator and the command line;
- `turnout.analytics`: the DuckDB archive, its sink, SQL alerts, replay and what-if;
- `turnout.dashboards`: the Streamlit app.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("turnout")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "0+unknown"
