"""File metadata gathered once, before any worker starts: entries, branches, cluster edges."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from rootml.datasets._cache import FileCache
from rootml.datasets._columns import ColumnTable
from rootml.datasets._files import close_file, is_remote, match_names, open_tree, with_retries
from rootml.datasets._schema import BranchInfo, describe
from rootml.errors import SchemaError, closest, where

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileMeta:
    """url, tree, entries, the top-level branches (name -> BranchInfo), cluster boundaries, and
    `keys`: every name the tree answers to, sub-branches of split objects included, each mapped
    to the top-level branch holding it."""

    url: str
    tree: str | None  # None: a Parquet file (no tree name)
    entries: int
    branches: dict[str, BranchInfo]
    boundaries: tuple[int, ...]
    keys: Mapping[str, str] = field(default_factory=dict)


def read_metadata(
    urls: Sequence[str],
    tree: str | None,
    retries: int = 3,
    backoff: float = 0.5,
    cache: FileCache | None = None,
) -> list[FileMeta]:
    """Metadata of every file, read in parallel threads; files are closed afterwards, so nothing
    open is inherited by forked DataLoader workers. With a `cache`, remote files are read from
    their checked local copies where there are some."""

    def one(url: str) -> FileMeta:
        copy = cache.check(url) if cache is not None and is_remote(url) else None
        file, name, obj = with_retries(
            lambda: open_tree(url, tree, copy), retries, backoff, url=url
        )
        try:
            if isinstance(obj, ColumnTable):
                branches, keys = obj.describe(), obj.keys()
                return FileMeta(url, name, obj.num_entries, branches, obj.boundaries(), keys)
            return FileMeta(
                url, name, int(obj.num_entries), describe(obj), _boundaries(obj), _keys(obj)
            )
        finally:
            close_file(file)

    with ThreadPoolExecutor(min(8, len(urls))) as pool:
        metas = list(pool.map(one, urls))
    names = {m.tree for m in metas if m.tree is not None}  # a Parquet file has no tree name
    if len(names) > 1:
        raise SchemaError(f"files hold differently named trees {sorted(names)}; pass tree=NAME")
    return metas


def _keys(obj) -> dict[str, str]:
    """Every name a TTree answers to (for expressions) -> the top-level branch holding it."""
    keys = {}
    for top in obj.branches:
        keys[top.name] = top.name
        for full in (True, False):
            for name in top.keys(recursive=True, full_paths=full):
                keys.setdefault(name, top.name)
                keys.setdefault(f"{top.name}/{name}", top.name)
    return keys


def _boundaries(obj) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in obj.common_entry_offsets())
    except Exception as err:  # branches with no baskets at all: plain chunking is as good
        log.debug("no cluster offsets for %s: %s", obj.object_path, err)
        return ()


def select_branches(
    metas: Sequence[FileMeta],
    branches: Sequence[str] | None,
    exclude: Sequence[str] | None,
    reserved: Mapping[str, str],
    aliases: Mapping[str, str],
) -> dict[str, BranchInfo]:
    """The feature branches (name -> BranchInfo of the first file) in stored order.

    reserved: identifier, label and weight branches (name -> argument, e.g. "label_branch"):
    never features; each must exist and hold one number per entry. Every file must have the
    branches with the same kind; unsupported types requested by exact name raise (with a hint to
    exclude them); those only matched by a pattern or the default are skipped with one warning
    naming them. Raises SchemaError with the file URL, tree and branch.
    """
    first = metas[0]
    available = [*first.branches, *[a for a in aliases if a not in first.branches]]
    context = {"url": first.url, "tree": first.tree}
    for name, argument in reserved.items():
        _check_reserved(first, name, argument, aliases, available)
    for name in branches or ():
        _check_not_inside_object(first, name, available, "branches")
    chosen = match_names(branches, available, **context) if branches else list(available)
    if exclude:
        dropped = set(match_names(exclude, available, **context))
        chosen = [name for name in chosen if name not in dropped]
    chosen = [name for name in chosen if name not in reserved]
    exact = {b for b in branches or () if not any(ch in b for ch in "*?[")}
    selected, skipped = {}, []
    for name in chosen:
        info = first.branches.get(name) or BranchInfo(name, "alias", "", aliases[name])
        if info.kind == "unsupported":
            if name in exact:
                raise SchemaError(
                    f"type {info.typename!r} cannot be turned into numbers; "
                    f"pass exclude=[{name!r}]",
                    branch=name,
                    **context,
                )
            skipped.append(f"{name} ({info.typename})")
            continue
        selected[name] = info
    if skipped:
        log.warning(
            "%s: %d branches are not numbers and are left out: %s",
            where(**context),
            len(skipped),
            ", ".join(skipped),
        )
    if not selected:
        raise SchemaError("no numeric feature branch selected", **context)
    return selected


def schema_error(meta: FileMeta, message: str, branch: str | None = None) -> SchemaError:
    """A SchemaError about `branch` (or the whole tree) of the file of `meta`."""
    return SchemaError(message, url=meta.url, tree=meta.tree, branch=branch)


def _check_reserved(
    meta: FileMeta, name: str, argument: str, aliases: Mapping[str, str], available: list[str]
) -> None:
    """An identifier, label or weight branch: present, and one number per entry."""
    if name in aliases:
        return  # its values are checked when read
    if name not in meta.branches:
        _check_not_inside_object(meta, name, available, argument)
        raise schema_error(
            meta, f"{argument} {name!r}: no such branch; closest: {closest(name, available)}", name
        )
    info = meta.branches[name]
    if info.kind != "flat":
        kind = "not numbers" if info.kind == "unsupported" else info.kind
        raise schema_error(
            meta,
            f"{argument} must hold one number per entry, but {name!r} is {kind} ({info.typename})",
            name,
        )


def _check_not_inside_object(
    meta: FileMeta, name: str, available: list[str], argument: str
) -> None:
    """A sub-branch of a split object is named as such, not as a missing branch."""
    if name in available or name not in meta.keys:
        return
    raise schema_error(
        meta,
        f"{argument}: {name!r} is a sub-branch of the split object {meta.keys[name]!r}; rootml "
        "reads top-level branches of numbers only (write the members out as branches of their own)",
        name,
    )


def check_same(metas: Sequence[FileMeta], names: Sequence[str], aliases: Mapping[str, str]) -> None:
    """Raise SchemaError naming a file that lacks one of `names` (branches, not aliases) or holds
    it with another kind or shape than the first file."""
    first = metas[0]
    for meta in metas[1:]:
        missing = [n for n in names if n not in aliases and n not in meta.keys]
        changed = [
            n
            for n in names
            if n in meta.branches
            and n in first.branches
            and (meta.branches[n].kind, meta.branches[n].shape)
            != (first.branches[n].kind, first.branches[n].shape)
        ]
        if missing or changed:
            raise SchemaError(
                f"differs from {first.url}: "
                + "; ".join(
                    filter(
                        None,
                        [missing and f"missing {missing}", changed and f"other types {changed}"],
                    )
                ),
                url=meta.url,
                tree=meta.tree,
            )
