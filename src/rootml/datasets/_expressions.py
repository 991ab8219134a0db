"""The expressions of a request (cut, aliases) checked against the branches, at construction.

A name that is no branch, an expression that does not parse or an alias defined through itself
is a mistake in the request: it is refused before anything is read (a SchemaError naming the
expression), never met at the first batch as an unreadable file that on_error="skip" would skip.
Names are found by uproot's own expression language, the one that evaluates them.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from rootml.datasets._metadata import FileMeta, schema_error
from rootml.errors import ConfigError, SchemaError, closest
from rootml.transforms import parse_sort_key


def expression_branches(
    cut: str | None, aliases: Mapping[str, str], keys: Collection[str], url: str, tree: str
) -> list[str]:
    """The branches (of `keys`, every name the tree has) that `cut` and `aliases` read, in order.

    Raises ConfigError for an expression that is not a string, SchemaError naming the expression
    for a syntax error, a name that is neither a branch nor an alias (with the closest names),
    an alias named like a branch (the branch would win) or aliases defined through each other.
    """
    import uproot

    language = uproot.language.python.PythonLanguage()
    names = [*keys, *aliases]
    expressions = {f"alias {name!r}": value for name, value in aliases.items()}
    if cut is not None:
        expressions["cut"] = cut
    uses: dict[str, list[str]] = {}
    for what, expression in expressions.items():
        if not isinstance(expression, str) or not expression.strip():
            raise ConfigError(f"{what} must be an expression string, not {expression!r}")
        context = {"url": url, "tree": tree}
        try:
            uses[what] = language.free_symbols(expression, names, list(aliases), url, tree)
        except SyntaxError as err:
            message = str(err.args[0]).split("\n", 1)[0] if err.args else "syntax error"
            raise SchemaError(
                f"{what} {expression!r} does not parse: {message}", **context
            ) from None
        except KeyError as err:  # uproot.KeyInFileError: a name that is no branch or alias
            name = str(err.args[0]) if err.args else ""
            raise SchemaError(
                f"{what} {expression!r} uses {name!r}, which is no branch or alias; "
                f"closest: {closest(name, names)}",
                **context,
            ) from None
        except (TypeError, ValueError) as err:  # e.g. get() with a non-constant argument
            raise SchemaError(f"{what} {expression!r}: {err}", **context) from None
    for name in aliases:
        if name in keys:
            raise SchemaError(
                f"alias {name!r} has the name of a branch, which would be read instead; "
                "give the alias another name",
                url=url,
                tree=tree,
            )
    _check_cycles({name: uses[f"alias {name!r}"] for name in aliases}, url, tree)
    return list(dict.fromkeys(s for used in uses.values() for s in used if s not in aliases))


def _check_cycles(uses: Mapping[str, list[str]], url: str, tree: str) -> None:
    """Refuse aliases that are defined, directly or through others, by themselves."""
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            cycle = " -> ".join([*path[path.index(name) :], name])
            raise SchemaError(
                f"aliases are defined through themselves: {cycle}", url=url, tree=tree
            )
        if name in done or name not in uses:
            return
        for symbol in uses[name]:
            visit(symbol, (*path, name))
        done.add(name)

    for name in uses:
        visit(name, ())


def sort_key_branches(
    sort_by: Mapping[str, Any] | None, meta: FileMeta, aliases: Mapping[str, str]
) -> list[str]:
    """The key branches of `sort_by`, each checked to be a jagged branch or an alias of the first
    file (SchemaError naming it and the closest jagged branches otherwise)."""
    keys = []
    jagged = [n for n, info in meta.branches.items() if info.kind == "jagged"]
    for collection, key in (sort_by or {}).items():
        branch, _ = parse_sort_key(key)
        info = meta.branches.get(branch)
        if branch in aliases:
            continue
        if info is None or info.kind != "jagged":
            what = "no branch" if info is None else f"not a jagged branch ({info.typename})"
            raise schema_error(
                meta,
                f"sort_by[{collection!r}]: key {branch!r} is {what}; closest jagged branches: "
                f"{closest(branch, jagged)}",
                branch,
            )
        keys.append(branch)
    return keys
