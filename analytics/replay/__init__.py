"""`turnout replay`: read the event log back to debug what the router did.

- `trail`: every event of one request, in order, with timings and reasons;
- `state_at`: router state as of a moment, folded with the router's own reducer;
- `verify`: the log's projections against a live router's (or a saved) state;
- `redrive`: re-submit the recorded requests of a window under new ids.

The log is read from the DuckDB archive by default, or from the events
topic itself (`source`). Pure parts (ordering, folding, diffing, planning)
live apart from the I/O (`cli`), so they are tested without a broker.
"""

__all__: list[str] = []
