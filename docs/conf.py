"""Sphinx configuration: lyapopt's documentation site.

Build it (no network needed) with

    pip install -e ".[docs]" && sphinx-build -W -b html docs docs/_build/html

Notebooks are rendered from their stored outputs (``nb_execution_mode =
"off"``); ``tests/test_notebooks.py`` executes them. MathJax is served from
the site itself (the ``sphinx-mathjax-offline`` package copies MathJax 3
into ``_static/mathjax``), so formulas render without a network.
"""

from __future__ import annotations

import lyapopt

project = "lyapopt"
author = "the lyapopt developers"
copyright = "the lyapopt developers"
release = lyapopt.__version__
version = release

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    # Bundles MathJax 3 and points mathjax_path at the copy: no CDN.
    "sphinx-mathjax-offline",
]

source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
templates_path = ["_templates"]

# API reference: one generated page per public name, Google-style docstrings.
autosummary_generate = True
autosummary_imported_members = True
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
add_module_names = False

# Notebooks: shown with the outputs they were committed with.
nb_execution_mode = "off"
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = f"lyapopt {release}"
html_theme_options = {
    "show_toc_level": 2,
    "home_page_in_toc": True,
    "use_download_button": False,
    "use_fullscreen_button": False,
    "use_repository_button": False,
}
html_static_path: list[str] = []
