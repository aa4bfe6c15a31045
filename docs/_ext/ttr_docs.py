"""The documentation's own Sphinx extension.

- ``.. ttr-cli-commands::`` renders the reference of every command of
  ``trio-tinkex-recovery``, from the same argparse parsers the program
  uses (through sphinx-argparse): a command added to the program appears
  here without an edit, and an option's help is written once.
- At the end of the build, every public name (the ``__all__`` of the
  package and of ``testing``, ``metrics`` and ``sdk``) must have an entry
  of its own in the API reference; a missing one is a warning, so an
  error under ``-W``.
- autodoc finds the ``#:`` comments of published classes' attributes
  (they live in private modules), shows an attrs factory default as the
  call it is (``dict()``), resolves ``dt.datetime`` and the like, and
  napoleon reads only docstrings of functions and classes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil
import re
from typing import TYPE_CHECKING, Any

import attrs
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.errors import PycodeError
from sphinx.pycode import ModuleAnalyzer
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


@functools.cache
def _comment_docs() -> dict[tuple[str, str], dict[str, list[str]]]:
    """The ``#:`` comments of every module of the package.

    By ``(class qualname or "", attribute)``, then by module name.
    """
    import trio_tinkex_recovery

    docs: dict[tuple[str, str], dict[str, list[str]]] = {}
    names = ["trio_tinkex_recovery"] + [
        info.name
        for info in pkgutil.walk_packages(
            trio_tinkex_recovery.__path__, "trio_tinkex_recovery."
        )
    ]
    for name in names:
        try:
            analyzer = ModuleAnalyzer.for_module(name)
            analyzer.analyze()
        except PycodeError:
            continue
        for key, lines in analyzer.attr_docs.items():
            docs.setdefault(key, {})[name] = list(lines)
    return docs


def _lend_comment_docs(app: Sphinx) -> None:
    """Give the public modules the ``#:`` comments of what they publish.

    The package shows its public classes as its own (their ``__module__`` is
    the public module), so autodoc looks for the ``#:`` comments of their
    attributes, and of published constants, in the public module's source
    and finds none: they are in the private module that defines each.  This
    copies them (and the source order of the members) into the public
    module's analyzer, which autodoc asks.
    """
    comments = _comment_docs()
    for public in (*PUBLIC_MODULES, "trio_tinkex_recovery.testing.pytest_plugin"):
        module = importlib.import_module(public)
        target = ModuleAnalyzer.for_module(public)
        target.analyze()
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            for (namespace, attr), by_module in comments.items():
                if namespace == name or namespace.startswith(name + "."):
                    source = _defining_module(obj, name, by_module)
                elif namespace == "" and attr == name:
                    source = _defining_module(None, "", by_module, attr=name)
                else:
                    continue
                if source is None:
                    continue
                target.attr_docs.setdefault((namespace, attr), by_module[source])
                order = ModuleAnalyzer.for_module(source).tagorder
                key = f"{namespace}.{attr}" if namespace else attr
                if key in order:
                    target.tagorder.setdefault(key, order[key])


def _defining_module(
    obj: Any, qualname: str, by_module: dict[str, list[str]], *, attr: str = ""
) -> str | None:
    """The module among ``by_module`` that defines ``obj`` (or constant ``attr``)."""
    for module_name in by_module:
        module = importlib.import_module(module_name)
        if attr:
            if attr in getattr(module, "__all__", ()) or hasattr(module, attr):
                return module_name
            continue
        if getattr(module, qualname, None) is obj:
            return module_name
    return None


def _signature_defaults(
    app: Sphinx,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> tuple[str | None, str | None] | None:
    """An attrs default made by a factory shows as the call (``dict()``).

    autodoc shows attrs' ``NOTHING`` otherwise; each instance gets a new
    object from the factory.
    """
    if signature is None or "NOTHING" not in signature:
        return None
    if not (isinstance(obj, type) and attrs.has(obj)):
        return None
    for field in attrs.fields(obj):
        default = field.default
        if isinstance(default, attrs.Factory) and not default.takes_self:
            factory = getattr(default.factory, "__name__", "factory")
            signature = re.sub(
                rf"(\b{re.escape(field.alias or field.name)}: [^=]*?)= NOTHING",
                rf"\1= {factory}()",
                signature,
            )
    return signature, return_annotation


def _napoleon_for_callables_only(app: Sphinx, config: Any) -> None:
    """Napoleon reads functions and classes; attribute docs stay prose.

    The ``#:`` comments of attributes are plain sentences, often with a
    colon (``What happened: one of EVENT_NAMES.``); napoleon would take what
    comes before the colon for the attribute's type.
    """
    listeners = app.events.listeners["autodoc-process-docstring"]
    for index, listener in enumerate(listeners):
        handler = listener.handler
        if getattr(handler, "__module__", "") != "sphinx.ext.napoleon":
            continue

        def skip_attributes(
            app: Sphinx,
            what: str,
            name: str,
            obj: Any,
            options: Any,
            lines: list[str],
            _handler: Any = handler,
        ) -> None:
            if what not in ("attribute", "data", "property"):
                _handler(app, what, name, obj, options, lines)

        listeners[index] = listener._replace(handler=skip_attributes)


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("config-inited", _napoleon_for_callables_only, priority=900)
    app.connect("builder-inited", _lend_comment_docs)
    app.connect("autodoc-process-signature", _signature_defaults)
    app.add_directive("ttr-cli-commands", CliCommands)
    app.connect("missing-reference", _resolve_alias, priority=400)
    app.connect("build-finished", _check_api_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
