"""`turnout replay whatif`: re-decide recorded traffic under another config.

- `recording`: the log read once, in order, as per-request inputs (arrivals,
  recorded calls, retries, cancels) and the price table over time;
- `outcomes`: upstream outcomes the recording lacks, drawn from what each
  model did around that moment (or `--assume`d for an unseen model);
- `engine`: the router's own pure core, run in virtual time over the arrivals;
- `report`: both sides counted alike, the per-request verdicts and reasons;
- `cli`: the command.
"""

__all__: list[str] = []
