"""The app's page list (light: Streamlit only), shared by app.py and `_ui.ensure_app_frame`.

URL paths: / (Home), /data, /warmup, /select, /explore, /sweep, /label-errors, /learn.
"""

import streamlit as st

# (file, title, icon, url path; None: the home page at /)
PAGE_SPECS = [
    ("pages/home.py", "Home", ":material/home:", None),
    ("pages/data.py", "Data", ":material/dataset:", "data"),
    ("pages/warmup.py", "Warm-up", ":material/local_fire_department:", "warmup"),
    ("pages/select.py", "Select", ":material/content_cut:", "select"),
    ("pages/explore.py", "Explore", ":material/scatter_plot:", "explore"),
    ("pages/sweep.py", "Sweep", ":material/show_chart:", "sweep"),
    ("pages/label_errors.py", "Label errors", ":material/label:", "label-errors"),
    ("pages/learn.py", "Learn", ":material/school:", "learn"),
]


def navigation():
    """st.navigation over PAGE_SPECS; returns the page to run."""
    return st.navigation([st.Page(path, title=title, icon=icon, default=url is None,
                                  **({} if url is None else {"url_path": url}))
                          for path, title, icon, url in PAGE_SPECS])
