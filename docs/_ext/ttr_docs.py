"""The documentation's own Sphinx extension.

- ``.. ttr-cli-commands::`` renders the reference of every command of
  ``trio-tinkex-recovery``, from the same argparse parsers the program
  uses (through sphinx-argparse): a command added to the program appears
  here without an edit, and an option's help is written once.
- At the end of the build, every public name (the ``__all__`` of the
  package and of ``testing``, ``metrics`` and ``sdk``) must have an entry
  of its own in the API reference; a missing one is a warning, so an
  error under ``-W``.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from typing import TYPE_CHECKING, Any

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

if TYPE_CHECKING:
    from collections.abc import Iterator

    from sphinx.application import Sphinx

    from trio_tinkex_recovery.cli._runtime import Parser

logger = logging.getLogger(__name__)

PROG = "trio-tinkex-recovery"
#: The modules whose ``__all__`` the API reference documents, name by name.
PUBLIC_MODULES = (
    "trio_tinkex_recovery",
    "trio_tinkex_recovery.testing",
    "trio_tinkex_recovery.metrics",
    "trio_tinkex_recovery.sdk",
)


@contextlib.contextmanager
def _neutral_environment() -> Iterator[None]:
    """Defaults that depend on the machine are shown by their variable."""
    saved = os.environ.get("XDG_STATE_HOME")
    os.environ["XDG_STATE_HOME"] = "$XDG_STATE_HOME"
    try:
        yield
    finally:
        if saved is None:
            del os.environ["XDG_STATE_HOME"]
        else:
            os.environ["XDG_STATE_HOME"] = saved


def _commands() -> dict[str, Any]:
    from trio_tinkex_recovery import cli

    return dict(cli._COMMANDS)


def top_parser() -> Parser:
    """The parser of ``trio-tinkex-recovery`` itself (for sphinx-argparse)."""
    from trio_tinkex_recovery import cli

    return cli._parser(PROG)


def command_parser(name: str) -> Parser:
    """The parser of one command, built by the command's own module."""
    command = _commands()[name]
    module = importlib.import_module(command.parse.__module__)
    with _neutral_environment():
        parser: Parser = module.parser(f"{PROG} {name}")
    return parser


def __getattr__(name: str) -> Any:
    """``parser_watch`` etc.: zero-argument parser factories for sphinx-argparse."""
    if name.startswith("parser_"):
        command = name.removeprefix("parser_").replace("_", "-")
        if command in _commands():
            return lambda: command_parser(command)
    raise AttributeError(name)


class CliCommands(SphinxDirective):
    """Every command of the program, one section each, options included."""

    has_content = False

    def run(self) -> list[nodes.Node]:
        lines: list[str] = []
        for name, command in _commands().items():
            title = f"``{name}``"
            lines += [
                "",
                f".. _cli-{name}:",
                "",
                title,
                "~" * len(title),
                "",
                f"{command.summary[:1].upper()}{command.summary[1:]}.",
                "",
                ".. argparse::",
                "   :module: ttr_docs",
                f"   :func: parser_{name.replace('-', '_')}",
                f"   :prog: {PROG} {name}",
                "   :nodefault:",
                "",
            ]
        container = nodes.section()
        container.document = self.state.document
        self.state.nested_parse(
            StringList(lines, source="ttr-cli-commands"),
            self.content_offset,
            container,
            match_titles=True,
        )
        return list(container.children)


def _check_api_reference(app: Sphinx, exception: Exception | None) -> None:
    """Warn about each public name without an entry of its own."""
    if exception is not None or app.builder.name != "html":
        return
    documented = set(app.env.domains["py"].objects)
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            if f"{module_name}.{name}" not in documented:
                logger.warning(
                    "%s.%s has no entry in the API reference", module_name, name
                )


#: Module aliases of the source (``import datetime as dt``), as annotations
#: written with them name their targets.
MODULE_ALIASES = {"dt.": "datetime."}
#: Standard-library names the source imports bare, for annotations that
#: autodoc shows as written (when it cannot evaluate them).
BARE_NAMES = {
    "AbstractAsyncContextManager": "contextlib.AbstractAsyncContextManager",
}


def _resolve_alias(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """Resolve ``dt.datetime`` as ``datetime.datetime``, and the like."""
    from sphinx.ext import intersphinx

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py":
        return None
    if target in BARE_NAMES:
        node["reftarget"] = BARE_NAMES[target]
        return intersphinx.missing_reference(app, env, node, contnode)
    for alias, module in MODULE_ALIASES.items():
        if target.startswith(alias):
            node["reftarget"] = module + target.removeprefix(alias)
            return intersphinx.missing_reference(app, env, node, contnode)
    return None


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("ttr-cli-commands", CliCommands)
    app.connect("missing-reference", _resolve_alias, priority=400)
    app.connect("build-finished", _check_api_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
