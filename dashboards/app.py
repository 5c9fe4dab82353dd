"""The Streamlit app behind `turnout dashboard`: the entry script, run by `streamlit run`.

Sets up the page, the navigation (one file per page in dashboards/screens/) and
the shared sidebar, then runs the chosen page. Everything it reads comes
from the archive's published snapshot, read-only (`turnout.dashboards.source`).
"""

from __future__ import annotations

from typing import Final

import streamlit as st

from turnout.dashboards.shell import load_settings, sidebar

PAGES: Final = (
    ("screens/overview.py", "Overview", ":material/monitoring:"),
    ("screens/routing.py", "Routing", ":material/alt_route:"),
    ("screens/reliability.py", "Reliability", ":material/health_and_safety:"),
    ("screens/tenants.py", "Tenants", ":material/groups:"),
    ("screens/cache.py", "Cache", ":material/cached:"),
    ("screens/alerts.py", "Alerts", ":material/notifications_active:"),
    ("screens/explorer.py", "Request explorer", ":material/manage_search:"),
    ("screens/whatif.py", "What-if", ":material/science:"),
)


def main() -> None:
    st.set_page_config(page_title="Turnout", page_icon=":material/alt_route:", layout="wide")
    settings = load_settings()
    pages = [
        st.Page(path, title=title, icon=icon, default=i == 0)
        for i, (path, title, icon) in enumerate(PAGES)
    ]
    page = st.navigation(pages)
    sidebar(settings)
    page.run()


main()
