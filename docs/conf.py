"""Sphinx configuration: MyST Markdown pages, the tutorial notebook (executed at every build) and an API
reference from numpydoc docstrings. Built in CI with warnings as errors."""

from astrovader import __version__

project = "astrovader"
author = "astrovader developers"
release = version = __version__

extensions = ["myst_nb", "sphinx.ext.autodoc", "numpydoc", "sphinx.ext.intersphinx"]
exclude_patterns = ["_build", "**.ipynb_checkpoints"]
nb_execution_mode = "force"  # CI builds the docs, so the tutorial runs from simulate to report at every build
nb_execution_raise_on_error = True
nb_execution_timeout = 600
myst_heading_anchors = 3

autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# Every documented public function and class must describe each of its parameters.
numpydoc_validation_checks = {"PR01", "PR02"}
numpydoc_xref_param_type = False

intersphinx_mapping = {}
html_theme = "alabaster"
html_theme_options = {"page_width": "1200px", "sidebar_width": "230px"}
html_static_path: list[str] = []
