"""The two ways a page shows figures: KPI tiles and tables.

Rules, so nothing a person reads is cut off or raw:
- tiles come in rows of at most `PER_ROW`, the rows balanced (five tiles are
  3 + 2); at 1280 px a quarter of the page holds about ten characters of a
  tile's value, so values come from fmt's short forms (nine at most: 228k,
  $88.3k, 23.5 s, $0.000034) and a shortened value puts the exact figure in
  the tile's tooltip;
- a table shows the columns it is given, in that order, under words (never
  column names); a figure is text from `turnout.dashboards.fmt` (its unit, a
  sensible precision), right-aligned; a missing value is a dash. The
  DataFrame keeps its column names (tests and code read them); the trade-off
  of text cells is that sorting by a figure column sorts the text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from turnout.dashboards import fmt

__all__ = ["PER_ROW", "Col", "Tile", "table", "tiles"]

PER_ROW: Final = 4


@dataclass(frozen=True, slots=True)
class Tile:
    """One KPI: `value` is what the tile shows, `exact` the whole figure when that is longer."""

    label: str
    value: str
    exact: str | None = None
    help: str | None = None
    chart: Sequence[float] | None = None
    delta: str | None = None
    delta_color: Literal["normal", "inverse", "off"] = "normal"

    def tooltip(self) -> str | None:
        exact = f"Exactly {self.exact}." if self.exact and self.exact != self.value else None
        return "\n\n".join(p for p in (self.help, exact) if p) or None


def tiles(items: Sequence[Tile], *, per_row: int = PER_ROW) -> None:
    """`items` in balanced rows of at most `per_row` columns."""
    if not items:
        return
    rows = -(-len(items) // per_row)
    width = -(-len(items) // rows)
    for start in range(0, len(items), width):
        for column, tile in zip(st.columns(width), items[start : start + width], strict=False):
            column.metric(
                tile.label,
                tile.value,
                delta=tile.delta,
                delta_color=tile.delta_color,
                help=tile.tooltip(),
                chart_data=list(tile.chart) if tile.chart is not None else None,
            )


@dataclass(frozen=True, slots=True)
class Col:
    """How one column shows: its header, and for a figure the fmt function that writes it.

    `config` (a `st.column_config` column) shows the raw value instead, e.g. a progress bar.
    """

    label: str
    show: Callable[[Any], str] | None = None
    help: str | None = None
    config: Any = None
    align: Literal["left", "right"] | None = None  # default: figures right, text left


def _figures(values: pd.Series, show: Callable[[Any], str]) -> pd.Series:
    """`values` as `show` writes them, each distinct value written once (a column of
    hundreds of rows repeats a few labels or numbers); missing ones as fmt writes None."""
    present = values.notna()
    text = values[present].astype(object)
    written = {v: show(v) for v in text.unique()}
    return text.map(written).reindex(values.index, fill_value=show(None)).astype("string")


def table(
    df: pd.DataFrame,
    columns: Mapping[str, Col],
    *,
    where: DeltaGenerator | None = None,
) -> None:
    """`df`'s `columns` (name -> Col), in that order, formatted; drawn in `where` (the page)."""
    shown: dict[str, Any] = {}
    config: dict[str, Any] = {}
    for name, col in columns.items():
        if col.config is not None:
            shown[name], config[name] = df[name], col.config
            continue
        if col.show is None:  # text: as it is, a dash where missing
            shown[name] = df[name].astype("string").fillna(fmt.NONE)
        else:
            shown[name] = _figures(df[name], col.show)
        align = col.align or ("right" if col.show is not None else "left")
        config[name] = st.column_config.TextColumn(col.label, help=col.help, alignment=align)
    frame = pd.DataFrame(shown, index=df.index)
    (where or st).dataframe(frame, hide_index=True, column_config=config)
