"""`turnout simulate`: an OpenRouter-compatible upstream simulator.

Faithful where a router depends on it: chat completions (JSON and SSE),
OpenRouter's error shapes and statuses, Retry-After, mid-stream errors,
hangs, resets and malformed bodies on a seeded, time-phased scenario;
`/models` prices, `/generation` stats, and counters at `/_sim/stats`.

    from turnout.service.upstream.simulator import SimulatorOptions, parse_scenario, start_in_thread

    with start_in_thread(SimulatorOptions(scenario=parse_scenario(toml_text))) as sim:
        sim.base_url   # "http://127.0.0.1:PORT/api/v1"

Modules: scenario (pure model and decisions), catalogue (prices), answer
(deterministic text, token counts), wire (JSON shapes), state, chat and app
(the ASGI app), asgi (raw ASGI helpers), server (uvicorn), cli.
"""

from __future__ import annotations

from .app import SimulatorApp
from .scenario import Scenario, ScenarioError, parse_scenario, with_overrides
from .server import RunningSimulator, start_in_thread
from .state import SimulatorOptions

__all__ = [
    "RunningSimulator",
    "Scenario",
    "ScenarioError",
    "SimulatorApp",
    "SimulatorOptions",
    "parse_scenario",
    "start_in_thread",
    "with_overrides",
]
