"""The dashboard pages: one script each, run by `st.navigation` (dashboards/app.py).

A page only renders: its numbers come from `turnout.dashboards.queries`, its charts
from `turnout.dashboards.charts`, and `turnout.dashboards.shell.run_page` gives it the
window, filters, refresh and empty states.

The folder is not called `pages/`: Streamlit takes a `pages/` folder next to
the entry script for an old-style multipage app and then runs a page's file
without the entry script (no sidebar, no navigation) on some reruns.
"""
