"""Sphinx configuration of the trio-tinkex-recovery documentation.

Built by ``nox -s docs``: the HTML pages with ``-W -n`` (a warning or a
reference that does not resolve fails the build), then the code examples
of the pages run with the doctest builder against the embedded simulator.

Intersphinx without a network: the build must work from a clean clone on a
machine that reaches package registries only, so the inventories of
Python, trio and httpx cannot be downloaded at build time.  ``docs/_inv/``
ships one small ``objects.inv`` per project instead, each holding only the
names these pages link to, with their official URLs:

- ``python.inv``: the entries of the official Python 3.11 inventory (the one
  the ``python3.11-doc`` package ships) that these pages use, copied as
  they are.
- ``trio.inv`` and ``httpx.inv``: written from the tables in
  ``docs/_ext/inventories.py``.  Neither wheel ships its documentation, and
  httpx's site is not built with Sphinx (it publishes no inventory at all),
  so each entry names the page and anchor of the official site.

``python docs/_ext/inventories.py`` writes the two; a name the pages start
to use and the inventories lack fails the build (``-n``): add it to the
table and run the script again.
"""

from __future__ import annotations

import pathlib
import sys

HERE = pathlib.Path(__file__).parent
sys.path.insert(0, str(HERE / "_ext"))

import trio_tinkex_recovery  # noqa: E402

project = "trio-tinkex-recovery"
author = "trio-tinkex-recovery developers"
copyright = "trio-tinkex-recovery developers"
release = trio_tinkex_recovery.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinxcontrib_trio",
    "sphinxarg.ext",
    "myst_parser",
    "ttr_docs",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_inv", "_ext"]

# Options such as --duration stay two hyphens, quotes stay straight.
smartquotes = False

# Single backticks in docstrings and pages are references to Python objects,
# as in trio's and attrs' documentation.
default_role = "py:obj"
nitpicky = True

# -- autodoc ---------------------------------------------------------------
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_typehints_format = "short"
autodoc_preserve_defaults = False
autodoc_default_options: dict[str, object] = {}
autodoc_inherit_docstrings = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True
python_use_unqualified_type_names = True

# -- intersphinx (offline: see the module docstring) ----------------------
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", str(HERE / "_inv" / "python.inv")),
    "trio": ("https://trio.readthedocs.io/en/stable", str(HERE / "_inv" / "trio.inv")),
    "httpx": ("https://www.python-httpx.org", str(HERE / "_inv" / "httpx.inv")),
}
intersphinx_disabled_reftypes = ["std:doc"]
intersphinx_timeout = 1

# -- doctest ----------------------------------------------------------------
# The examples log a warning for each corrupted run they find, as they
# would in a program of yours; the build output stays quiet.
doctest_global_setup = """
import logging
logging.getLogger("trio_tinkex_recovery").setLevel(logging.ERROR)
"""
doctest_test_doctest_blocks = ""

# -- HTML -------------------------------------------------------------------
html_theme = "furo"
html_title = f"trio-tinkex-recovery {release}"
html_static_path: list[str] = []
html_show_sourcelink = False

# -- MyST (the changelog is Markdown) --------------------------------------
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]

# Names of projects that publish no Sphinx inventory: the official tinker
# SDK (its documentation is not built with Sphinx) and prometheus_client
# (likewise).  They appear in signatures as plain text.
nitpick_ignore_regex = [
    ("py:class", r"tinker\..*"),
    ("py:class", r"(prometheus_client\.registry\.)?CollectorRegistry"),
    # FakeTinker.app's class is private: what it offers is the ASGI interface.
    ("py:class", r"trio_tinkex_recovery\.testing\._app\.FakeTinkerApp"),
]
