"""File metadata gathered once, before any worker starts: entries, branches, cluster edges."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rootml.datasets._files import find_tree, match_names, open_file
from rootml.datasets._schema import BranchInfo, describe, is_rntuple
from rootml.errors import SchemaError, where

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileMeta:
    url: str
    tree: str
    entries: int
    branches: dict[str, BranchInfo]
    boundaries: tuple[int, ...]


def read_metadata(
    urls: Sequence[str], tree: str | None, retries: int = 3, backoff: float = 0.5
) -> list[FileMeta]:
    """Metadata of every file, read in parallel threads; files are closed afterwards, so nothing
    open is inherited by forked DataLoader workers."""

    def one(url: str) -> FileMeta:
        file = open_file(url, retries, backoff)
        try:
            name, obj = find_tree(file, tree, url)
            return FileMeta(url, name, int(obj.num_entries), describe(obj), _boundaries(obj))
        finally:
            file.close()

    with ThreadPoolExecutor(min(8, len(urls))) as pool:
        metas = list(pool.map(one, urls))
    names = {m.tree for m in metas}
    if len(names) > 1:
        raise SchemaError(f"files hold differently named trees {sorted(names)}; pass tree=NAME")
    return metas


def _boundaries(obj) -> tuple[int, ...]:
    if is_rntuple(obj):
        return tuple(int(c.num_first_entry) for c in obj.cluster_summaries)
    try:
        return tuple(int(x) for x in obj.common_entry_offsets())
    except Exception as err:  # branches with no baskets at all: plain chunking is as good
        log.debug("no cluster offsets for %s: %s", obj.object_path, err)
        return ()


def select_branches(
    metas: Sequence[FileMeta],
    branches: Sequence[str] | None,
    exclude: Sequence[str] | None,
    reserved: Sequence[str],
    aliases: Mapping[str, str],
) -> dict[str, BranchInfo]:
    """The feature branches (name -> BranchInfo of the first file) in stored order.

    Every file must have them with the same kind; unsupported types requested by exact name
    raise (with a hint to exclude them); those only matched by a pattern or the default are
    skipped with a warning. Identifier, label and weight branches are never features.
    """
    first = metas[0]
    available = [*first.branches, *[a for a in aliases if a not in first.branches]]
    context = where(first.url, first.tree)
    for name in reserved:
        if name not in first.branches and name not in aliases:
            match_names([name], available, context)
    chosen = match_names(branches, available, context) if branches else list(available)
    if exclude:
        dropped = set(match_names(exclude, available, context))
        chosen = [name for name in chosen if name not in dropped]
    chosen = [name for name in chosen if name not in reserved]
    exact = {b for b in branches or () if not any(ch in b for ch in "*?[")}
    selected = {}
    for name in chosen:
        info = first.branches.get(name) or BranchInfo(name, "alias", "", aliases[name])
        if info.kind == "unsupported":
            if name in exact:
                raise SchemaError(
                    f"{where(first.url, first.tree, name)}: type {info.typename!r} cannot be "
                    f"turned into numbers; pass exclude=[{name!r}]"
                )
            log.warning(
                "%s: type %r is not numeric; skipped",
                where(first.url, first.tree, name),
                info.typename,
            )
            continue
        selected[name] = info
    if not selected:
        raise SchemaError(f"{context}: no numeric feature branch selected")
    _check_same(metas, [*selected, *[r for r in reserved if r not in aliases]], aliases)
    return selected


def _check_same(
    metas: Sequence[FileMeta], names: Sequence[str], aliases: Mapping[str, str]
) -> None:
    first = metas[0]
    for meta in metas[1:]:
        missing = [n for n in names if n not in aliases and n not in meta.branches]
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
                f"{where(meta.url, meta.tree)} differs from {first.url}: "
                + "; ".join(
                    filter(
                        None,
                        [missing and f"missing {missing}", changed and f"other types {changed}"],
                    )
                )
            )
