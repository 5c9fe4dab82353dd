"""What-if: re-decide the window's recorded traffic under a pasted or uploaded config.

The page runs `turnout replay whatif` on the archive (read-only) for the sidebar's
window and (first) tenant, and shows the side-by-side table, the requests that
changed over time, and the changed requests with the reason. A run is kept in the
session until the config, the assumptions or the window change (the page's
auto-refresh does not re-run it).
"""

from __future__ import annotations

import tomllib
from typing import Any

import pandas as pd
import streamlit as st

from turnout.analytics.whatif.cli import on_archive
from turnout.analytics.whatif.outcomes import UnknownModel, parse_assume
from turnout.analytics.whatif.report import rows
from turnout.dashboards import charts, fmt
from turnout.dashboards.blocks import Col, Tile, table, tiles
from turnout.dashboards.shell import Context, run_page
from turnout.service.core.config import ConfigError, parse_config

_EXAMPLE = """# the config to try: sections you leave out keep their defaults
[tenants.acme]
requests_per_minute = 10
"""
_DIFF_ROWS = 500


def _ms(ts: Any) -> int:
    return int(pd.Timestamp(ts).timestamp() * 1000)


def _config(text: str) -> tuple[Any, list[str]]:
    try:
        return parse_config(tomllib.loads(text), {}), []
    except tomllib.TOMLDecodeError as err:
        return None, [f"not valid TOML: {err}"]
    except ConfigError as err:
        return None, list(err.problems)


def render(ctx: Context) -> None:
    uploaded = st.file_uploader("Upload a config (TOML)", type=["toml"], key="whatif_upload")
    default = uploaded.getvalue().decode() if uploaded is not None else _EXAMPLE
    text = st.text_area(
        "…or paste one", value=default, height=180, key=f"whatif_text_{hash(default)}"
    )
    assume = st.text_input(
        "Models the recording never called (optional)",
        placeholder="openai/gpt-4o=latency_ms:800,2500,0.01; ...",
        help="MODEL=latency_ms:P50,P99,ERROR_RATE, separated by ';'",
        key="whatif_assume",
    )
    tenant = ctx.scope.tenants[0] if ctx.scope.tenants else None
    window = ctx.scope.window
    key = (text, assume, _ms(window.start), _ms(window.end), tenant, ctx.settings.archive)
    if st.button("Run what-if", type="primary", key="whatif_run"):
        cfg, problems = _config(text)
        try:
            assumptions = parse_assume([a for a in assume.split(";") if a.strip()])
        except ValueError as err:
            problems.append(str(err))
        if problems:
            st.error("The config was refused:\n\n" + "\n".join(f"- {p}" for p in problems))
            return
        try:
            with st.spinner("Re-deciding the window's requests…"):
                run, diffs = on_archive(
                    ctx.settings.archive, cfg, since_ms=key[2], until_ms=key[3], tenant=tenant,
                    assumptions=assumptions,
                )  # fmt: skip
        except UnknownModel as err:
            st.error(
                f"The config calls {err}, which the recording never called in this window: "
                f"say how it behaves above, e.g. `{err}=latency_ms:800,2500,0.01`."
            )
            return
        st.session_state["whatif_result"] = (key, run, diffs)
    saved = st.session_state.get("whatif_result")
    if saved is None or saved[0] != key:
        st.info(
            "Paste or upload a config and press **Run what-if**: the window's recorded "
            "requests are re-decided under it (the sidebar's window and first tenant)."
        )
        return
    _, run, diffs = saved
    _show(ctx, run, diffs)


def _show(ctx: Context, run: Any, diffs: list[Any]) -> None:
    stats = run.stats
    if stats.requests == 0:
        st.warning("No requests arrived in this window.")
        return
    spent = [sum(s.spend_micros.values()) / 1e6 for s in (run.recorded, run.whatif)]
    tiles([
        Tile("Requests re-decided", fmt.count_short(stats.requests),
             exact=fmt.count(stats.requests)),
        Tile("Changed", fmt.count_short(stats.changed), exact=fmt.count(stats.changed),
             help="Requests whose outcome, model, attempts or cost differ."),
        Tile("Spend, what-if", fmt.usd_short(spent[1]), exact=fmt.usd(spent[1]),
             delta=fmt.usd_short(spent[1] - spent[0]), delta_color="inverse",
             help=f"Recorded: {fmt.usd(spent[0])}."),
        Tile("Modelled calls", fmt.count_short(stats.calls_modelled),
             exact=fmt.count(stats.calls_modelled),
             help="Calls the recording did not make, drawn from what each model did around "
             "that moment."),
    ])  # fmt: skip
    side_by_side = pd.DataFrame(_comparison(run), columns=["", "recorded", "what-if"])
    table(side_by_side, {
        "": Col(""), "recorded": Col("recorded", str), "what-if": Col("what-if", str),
    })  # fmt: skip
    if not diffs:
        st.success("Nothing changed: every request comes out as recorded.")
        return
    changed = pd.DataFrame({
        "time": pd.to_datetime([v.time_ms for v in diffs], unit="ms", utc=True).floor(
            f"{ctx.scope.bucket_s}s"),
        "what-if outcome": [v.side("whatif")["outcome"] for v in diffs],
        "requests": 1,
    })  # fmt: skip
    over_time = changed.groupby(["time", "what-if outcome"], as_index=False)["requests"].sum()
    st.altair_chart(
        charts.stacked_bars(
            over_time, y="requests", color="what-if outcome", scope=ctx.scope,
            title="Changed requests over time, by their what-if outcome", y_title="requests",
            fmt=",d",
        ),
        width="stretch",
    )  # fmt: skip
    listed = pd.DataFrame([
        {"request": v.request_id, "tenant": v.tenant,
         "recorded": _side(v.side("recorded")), "what-if": _side(v.side("whatif")),
         "why": v.reason}
        for v in diffs[:_DIFF_ROWS]
    ])  # fmt: skip
    table(listed, {name: Col(name) for name in listed.columns})
    if len(diffs) > _DIFF_ROWS:
        st.caption(f"The first {_DIFF_ROWS} of {len(diffs):,}; "
                   "`turnout replay whatif --diff --format json` lists all.")  # fmt: skip


def _comparison(run: Any) -> list[tuple[str, str, str]]:
    """The side-by-side rows of `turnout replay whatif`, money written as on every page
    (the command line's rows write $0.1378)."""
    recorded, whatif = run.recorded.spend_micros, run.whatif.spend_micros
    spend = {f"spend {t}": (recorded[t], whatif[t]) for t in set(recorded) | set(whatif)}
    spend["spend, all tenants"] = (sum(recorded.values()), sum(whatif.values()))
    usd = {label: (fmt.usd(a / 1e6), fmt.usd(b / 1e6)) for label, (a, b) in spend.items()}
    return [(label, *usd.get(label, (a, b))) for label, a, b in rows(run.recorded, run.whatif)]


def _side(s: dict[str, Any]) -> str:
    model = f" {s['model']}" if s["model"] else ""
    return f"{s['outcome']}{model} x{s['attempts']} {fmt.usd(s['cost_usd'])}"


run_page(
    "What-if", render, applies="window; tenant (the first chosen); task type and model: not applied"
)
