"""Write NanoAOD-like ROOT files (TTree or RNTuple) of any size with uproot.

Each file holds one `Events` tree with NanoAOD's naming: identifiers `run`, `luminosityBlock`,
`event`; 22 flat per-event branches (MET, pile-up, primary vertex, HT ...); the jagged
collections Jet (5 fields), FatJet (6), Muon (3), Electron (3), each with its counter `nJet`,
`nFatJet`, ...; and the per-event weight `genWeight`. `kind="signal"` mimics boosted
all-hadronic ttH(bb) (more and harder jets, more b-tags, Higgs/top-like fat jets),
`kind="background"` a multijet/tt+jets mix; they overlap enough that a small MLP separates them
well but not perfectly.

Events are drawn in fixed blocks of `BLOCK` events, each from its own generator seeded by
`(seed, kind, block index)`, so the content depends only on `seed`, `kind` and the entry number,
never on `step` (the number of events written per `extend`), and memory stays bounded by `step`.

Usage:
    python benchmarks/generate.py OUT.root --events N --kind signal|background \
        --compression zlib|lz4|zstd|none --format ttree|rntuple --step 100000 --seed S

Importable (benchmarks is not a package): put benchmarks/ on sys.path and `import generate`, or

    spec = importlib.util.spec_from_file_location("generate", "benchmarks/generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)

then call `generate.write_file(...)`, `generate.iter_steps(...)` or `generate.generate_events(...)`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import awkward as ak
import numpy as np
import uproot

TREE = "Events"
BLOCK = 10_000
KINDS = ("background", "signal")
FORMATS = ("ttree", "rntuple")
ID_BRANCHES = ("run", "luminosityBlock", "event")
WEIGHT_BRANCH = "genWeight"
# Collection -> fields, as NanoAOD names them ("Jet" + "_" + "pt" = "Jet_pt"), all float32.
COLLECTIONS: dict[str, tuple[str, ...]] = {
    "Electron": ("pt", "eta", "phi"),
    "FatJet": ("pt", "eta", "phi", "mass", "msoftdrop", "btagHbb"),
    "Jet": ("pt", "eta", "phi", "mass", "btagDeepB"),
    "Muon": ("pt", "eta", "phi"),
}
# Flat per-event branches and their dtypes (NanoAOD's types).
FLAT_BRANCHES: dict[str, np.dtype] = {
    **{
        name: np.dtype(np.float32)
        for name in (
            "CaloMET_phi CaloMET_pt HT LHE_HT MET_phi MET_pt MET_significance MET_sumEt MHT_phi "
            "MHT_pt PV_x PV_y PV_z Pileup_nTrueInt PuppiMET_phi PuppiMET_pt SoftActivityJetHT "
            "fixedGridRhoFastjetAll fixedGridRhoFastjetCentral"
        ).split()
    },
    "PV_npvs": np.dtype(np.int32),
    "PV_npvsGood": np.dtype(np.int32),
    "Pileup_nPU": np.dtype(np.int32),
}
_ID_DTYPES = {"run": np.uint32, "luminosityBlock": np.uint32, "event": np.uint64}
_EVENTS_PER_LUMI = 200
# ROOT's default levels for each algorithm (compression settings 101, 404, 505).
_DEFAULT_LEVEL = {"zlib": 1, "lz4": 4, "zstd": 5}
_CODEC = {"zlib": uproot.ZLIB, "lz4": uproot.LZ4, "zstd": uproot.ZSTD}


class _Profile(NamedTuple):
    """Distribution parameters of one kind; units GeV."""

    jet_mean: float  # Poisson mean of the jet multiplicity
    jet_pt_scale: float  # exponential slope above the 30 GeV threshold
    jet_eta_sigma: float
    b_fraction: float  # fraction of b-like jets (high btagDeepB)
    fatjet_mean: float
    fatjet_pt_scale: float  # exponential slope above 200 GeV
    resonance_fraction: float  # fat jets with a Higgs- or top-like soft-drop mass
    lepton_mean: float  # per flavour; all-hadronic signal has few leptons
    met_scale: float  # genuine MET from semileptonic b decays / neutrinos


_PROFILES = {
    "background": _Profile(5.0, 45.0, 1.5, 0.12, 0.6, 90.0, 0.15, 0.25, 20.0),
    "signal": _Profile(7.0, 55.0, 1.25, 0.35, 1.1, 130.0, 0.55, 0.15, 28.0),
}
_MAX_OBJECTS = {"Electron": 10, "FatJet": 8, "Jet": 30, "Muon": 10}


def branch_names() -> list[str]:
    """All branch (field) names of a generated tree in their order, counters included."""
    names = list(ID_BRANCHES)
    for collection, fields in COLLECTIONS.items():
        names.append("n" + collection)
        names.extend(f"{collection}_{field}" for field in fields)
    names.extend(FLAT_BRANCHES)
    names.append(WEIGHT_BRANCH)
    return names


class _Block(NamedTuple):
    """Events of one block as numpy: per-event columns and per-object flat columns."""

    events: dict[str, np.ndarray]  # length n, counters "nJet" ... included
    objects: dict[str, np.ndarray]  # "Jet_pt" -> all jets of the block, event-major

    def slice(self, i: int, j: int) -> _Block:
        objects = {}
        for collection, fields in COLLECTIONS.items():
            offsets = np.concatenate(([0], np.cumsum(self.events["n" + collection])))
            a, b = offsets[i], offsets[j]
            for field in fields:
                name = f"{collection}_{field}"
                objects[name] = self.objects[name][a:b]
        return _Block({k: v[i:j] for k, v in self.events.items()}, objects)


def _descending_within_events(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    # NanoAOD collections are pt-ordered; a segmented sort keeps that without an event loop.
    return ak.to_numpy(ak.flatten(ak.sort(ak.unflatten(values, counts), ascending=False)))


def _counts(rng: np.random.Generator, mean: float, n: int, collection: str) -> np.ndarray:
    return np.minimum(rng.poisson(mean, n), _MAX_OBJECTS[collection]).astype(np.int32)


def _eta(rng: np.random.Generator, sigma: float, size: int, limit: float) -> np.ndarray:
    # Redrawing the tails uniformly keeps |eta| < limit without piling entries up at the edge.
    eta, spare = rng.normal(0.0, sigma, size), rng.uniform(-limit, limit, size)
    return np.where(np.abs(eta) < limit, eta, spare)


def _phi(rng: np.random.Generator, size: int) -> np.ndarray:
    return rng.uniform(-np.pi, np.pi, size)


def _reduce_mantissa(values: np.ndarray, bits: int) -> np.ndarray:
    """Round float32 values to `bits` mantissa bits, as NanoAOD stores most object fields."""
    raw = values.astype(np.float32).view(np.uint32)
    shift = 23 - bits
    rounded = (raw + np.uint32(1 << (shift - 1))) & np.uint32(~((1 << shift) - 1) & 0xFFFFFFFF)
    return rounded.view(np.float32)


def _draw_jets(rng: np.random.Generator, p: _Profile, n: int, objects: dict) -> np.ndarray:
    njet = _counts(rng, p.jet_mean, n, "Jet")
    total = int(njet.sum())
    pt = _descending_within_events(30.0 + rng.exponential(p.jet_pt_scale, total), njet)
    is_b = rng.random(total) < p.b_fraction
    objects["Jet_pt"] = pt
    objects["Jet_eta"] = _eta(rng, p.jet_eta_sigma, total, 2.5)
    objects["Jet_phi"] = _phi(rng, total)
    objects["Jet_mass"] = pt * rng.uniform(0.05, 0.25, total)
    objects["Jet_btagDeepB"] = np.where(is_b, rng.beta(5.0, 1.5, total), rng.beta(0.6, 6.0, total))
    return njet


def _draw_fatjets(rng: np.random.Generator, p: _Profile, n: int, objects: dict) -> np.ndarray:
    nfat = _counts(rng, p.fatjet_mean, n, "FatJet")
    total = int(nfat.sum())
    resonant = rng.random(total) < p.resonance_fraction
    higgs = rng.random(total) < 0.5
    peak = np.where(higgs, rng.normal(125.0, 12.0, total), rng.normal(172.0, 15.0, total))
    msoftdrop = np.where(resonant, np.abs(peak), 10.0 + rng.exponential(40.0, total))
    pt = 200.0 + rng.exponential(p.fatjet_pt_scale, total)
    objects["FatJet_pt"] = _descending_within_events(pt, nfat)
    objects["FatJet_eta"] = _eta(rng, 1.2, total, 2.4)
    objects["FatJet_phi"] = _phi(rng, total)
    objects["FatJet_mass"] = msoftdrop * (1.0 + rng.exponential(0.1, total))
    objects["FatJet_msoftdrop"] = msoftdrop
    hbb = np.where(resonant, rng.beta(3.0, 2.0, total), rng.beta(1.0, 4.0, total))
    objects["FatJet_btagHbb"] = hbb
    return nfat


def _draw_leptons(
    rng: np.random.Generator, p: _Profile, n: int, collection: str, objects: dict
) -> np.ndarray:
    counts = _counts(rng, p.lepton_mean, n, collection)
    total = int(counts.sum())
    pt = 10.0 + rng.exponential(25.0, total)
    objects[f"{collection}_pt"] = _descending_within_events(pt, counts)
    objects[f"{collection}_eta"] = _eta(rng, 1.1, total, 2.5 if collection == "Electron" else 2.4)
    objects[f"{collection}_phi"] = _phi(rng, total)
    return counts


def _draw_event_level(
    rng: np.random.Generator, p: _Profile, jet_pt: np.ndarray, jet_phi: np.ndarray, njet: np.ndarray
) -> dict[str, np.ndarray]:
    n = len(njet)
    owner = np.repeat(np.arange(n), njet)
    ht = np.bincount(owner, weights=jet_pt, minlength=n)
    mhx = -np.bincount(owner, weights=jet_pt * np.cos(jet_phi), minlength=n)
    mhy = -np.bincount(owner, weights=jet_pt * np.sin(jet_phi), minlength=n)
    true_pu = rng.gamma(9.0, 32.0 / 9.0, n)
    npvs = np.maximum(rng.poisson(0.75 * true_pu), 1)
    sum_et = ht + rng.gamma(4.0, 100.0, n) + 15.0 * true_pu
    genuine, genuine_phi = rng.exponential(p.met_scale, n), _phi(rng, n)
    events = {}
    # One genuine MET per event seen through three resolutions (PF, PUPPI, calorimeter).
    for prefix, resolution in (("MET", 0.6), ("PuppiMET", 0.45), ("CaloMET", 0.9)):
        sigma = resolution * np.sqrt(sum_et)
        mex = genuine * np.cos(genuine_phi) + rng.normal(0.0, 1.0, n) * sigma
        mey = genuine * np.sin(genuine_phi) + rng.normal(0.0, 1.0, n) * sigma
        events[f"{prefix}_pt"], events[f"{prefix}_phi"] = np.hypot(mex, mey), np.arctan2(mey, mex)
        if prefix == "MET":
            events["MET_significance"] = (mex**2 + mey**2) / sigma**2
    rho_all = np.maximum(0.55 * true_pu + 0.002 * ht + rng.normal(0.0, 2.0, n), 0.0)
    events.update(
        HT=ht,
        LHE_HT=ht * rng.lognormal(0.0, 0.12, n),
        MET_sumEt=sum_et,
        MHT_phi=np.arctan2(mhy, mhx),
        MHT_pt=np.hypot(mhx, mhy),
        PV_x=rng.normal(0.01, 0.002, n),
        PV_y=rng.normal(0.04, 0.002, n),
        PV_z=rng.normal(0.0, 3.5, n),
        Pileup_nTrueInt=true_pu,
        SoftActivityJetHT=rng.gamma(2.0, 10.0, n) + 0.02 * ht + 0.3 * true_pu,
        fixedGridRhoFastjetAll=rho_all,
        fixedGridRhoFastjetCentral=np.maximum(0.9 * rho_all + rng.normal(0.0, 1.0, n), 0.0),
        PV_npvs=npvs,
        PV_npvsGood=rng.binomial(npvs, 0.92),
        Pileup_nPU=rng.poisson(true_pu),
    )
    # Same weight distribution for both kinds, so genWeight alone does not reveal the label.
    sign = np.where(rng.random(n) < 0.02, -1.0, 1.0)
    events[WEIGHT_BRANCH] = sign * rng.lognormal(0.0, 0.05, n)
    return events


def _make_block(index: int, n: int, kind: str, seed: int) -> _Block:
    """Draw events [index*BLOCK, index*BLOCK + n) of `kind`; the draw order is fixed."""
    p = _PROFILES[kind]
    rng = np.random.default_rng([seed, KINDS.index(kind), index])
    entry = np.arange(index * BLOCK, index * BLOCK + n, dtype=np.int64)
    events: dict[str, np.ndarray] = {
        "run": np.ones(n),
        "luminosityBlock": 1 + entry // _EVENTS_PER_LUMI,
        "event": 1 + entry,
    }
    objects: dict[str, np.ndarray] = {}
    events["nElectron"] = _draw_leptons(rng, p, n, "Electron", objects)
    events["nFatJet"] = _draw_fatjets(rng, p, n, objects)
    events["nJet"] = _draw_jets(rng, p, n, objects)
    events["nMuon"] = _draw_leptons(rng, p, n, "Muon", objects)
    objects = {
        k: _reduce_mantissa(v, 12 if k.startswith(("Electron", "Muon")) else 10)
        for k, v in objects.items()
    }
    # HT, MHT from the stored (rounded) jets, so HT == sum(Jet_pt) up to float32 rounding.
    jet_pt, jet_phi = objects["Jet_pt"].astype(np.float64), objects["Jet_phi"].astype(np.float64)
    events.update(_draw_event_level(rng, p, jet_pt, jet_phi, events["nJet"]))
    return _Block({k: v.astype(_dtype(k)) for k, v in events.items()}, objects)


def _dtype(name: str) -> np.dtype:
    if _is_counter(name):
        return np.dtype(np.int32)
    return np.dtype(_ID_DTYPES.get(name, FLAT_BRANCHES.get(name, np.float32)))


def _check(kind: str, seed: int) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _to_columns(blocks: list[_Block]) -> dict[str, np.ndarray | ak.Array]:
    columns: dict[str, np.ndarray | ak.Array] = {}
    for name in branch_names():
        if name in blocks[0].objects:
            counts = np.concatenate([b.events["n" + name.split("_", 1)[0]] for b in blocks])
            flat = np.concatenate([b.objects[name] for b in blocks])
            columns[name] = ak.unflatten(flat, counts)
        else:
            columns[name] = np.concatenate([b.events[name] for b in blocks])
    return columns


def iter_steps(
    n_events: int, *, kind: str = "background", seed: int = 0, step: int = 100_000, start: int = 0
) -> Iterator[dict[str, np.ndarray | ak.Array]]:
    """Yield events [start, start + n_events) in pieces of `step` events (the last may be shorter).

    Each piece maps every name of `branch_names()` to a column of its length: numpy arrays for
    identifiers (run/luminosityBlock uint32, event uint64), flat branches (float32 or int32),
    counters (int32) and genWeight (float32); `ak.Array` of `var * float32` for collection
    fields, with `ak.num(columns["Jet_pt"]) == columns["nJet"]`. The content does not depend on
    `step`. Raises ValueError for a negative count or start, step < 1, an unknown kind or a
    negative seed.
    """
    _check(kind, seed)
    if n_events < 0 or start < 0 or step < 1:
        raise ValueError(
            f"need n_events >= 0, start >= 0, step >= 1; got {n_events}, {start}, {step}"
        )
    cached: tuple[int, _Block] | None = None
    stop = start + n_events
    for first in range(start, stop, step):
        last = min(first + step, stop)
        pieces = []
        for index in range(first // BLOCK, (last - 1) // BLOCK + 1):
            # A block straddling two steps is drawn once and kept for the next step.
            if cached is None or cached[0] != index:
                cached = (index, _make_block(index, BLOCK, kind, seed))
            lo, hi = max(first - index * BLOCK, 0), min(last - index * BLOCK, BLOCK)
            pieces.append(cached[1].slice(lo, hi))
        yield _to_columns(pieces)


def generate_events(
    start: int, stop: int, *, kind: str = "background", seed: int = 0
) -> dict[str, np.ndarray | ak.Array]:
    """Columns of events [start, stop) in one piece; see `iter_steps` for names and dtypes."""
    if stop <= start:
        raise ValueError(f"need stop > start, got start={start}, stop={stop}")
    return next(iter_steps(stop - start, kind=kind, seed=seed, step=stop - start, start=start))


def _compression(name: str, level: int | None) -> uproot.compression.Compression | None:
    if name == "none":
        return None
    if name not in _CODEC:
        raise ValueError(f"compression must be one of {[*_CODEC, 'none']}, got {name!r}")
    return _CODEC[name](_DEFAULT_LEVEL[name] if level is None else level)


def write_file(
    path: str | os.PathLike,
    n_events: int,
    *,
    kind: str = "background",
    compression: str = "zlib",
    level: int | None = None,
    fmt: str = "ttree",
    step: int = 100_000,
    seed: int = 0,
    tree: str = TREE,
) -> dict[str, object]:
    """Write `n_events` generated events to a new ROOT file at `path` (a local path).

    fmt "ttree" writes a TTree whose counters nJet ... (int32) are the count branches of the
    jagged Jet_* ... branches, as in NanoAOD; "rntuple" writes an RNTuple with the same names,
    nJet an int32 field and Jet_pt a `var * float32` field. compression is "zlib", "lz4", "zstd"
    or "none"; level defaults to ROOT's (zlib 1, lz4 4, zstd 5). The file is written under a
    temporary name and renamed when complete. Returns a summary dict: path, events, kind,
    format, compression, level, seed, seconds, bytes. Raises ValueError for bad arguments.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    codec = _compression(compression, level)
    _check(kind, seed)
    path = Path(path)
    partial = path.with_name(path.name + ".part")
    started = time.perf_counter()
    with uproot.recreate(partial, compression=codec) as file:
        output = None
        for columns in iter_steps(n_events, kind=kind, seed=seed, step=step):
            if output is None:
                output = _make_output(file, tree, fmt, columns)
            if fmt == "ttree":
                columns = {k: v for k, v in columns.items() if not _is_counter(k)}
            output.extend(columns)
        if output is None:
            _make_output(file, tree, fmt, generate_events(0, 1, kind=kind, seed=seed))
    os.replace(partial, path)
    return {
        "path": str(path),
        "events": n_events,
        "kind": kind,
        "format": fmt,
        "compression": compression,
        "level": None if codec is None else codec.level,
        "seed": seed,
        "seconds": time.perf_counter() - started,
        "bytes": path.stat().st_size,
    }


def _is_counter(name: str) -> bool:
    return name.startswith("n") and name[1:] in COLLECTIONS


def _make_output(file, tree: str, fmt: str, columns: dict):
    types = {
        k: v.type.content if isinstance(v, ak.Array) else v.dtype
        for k, v in columns.items()
        if not (fmt == "ttree" and _is_counter(k))
    }
    if fmt == "rntuple":
        return file.mkrntuple(tree, types)
    # uproot names a counter after the counted branch; "Jet_pt" and "Jet_eta" share "nJet".
    return file.mktree(tree, types, counter_name=lambda counted: "n" + counted.split("_", 1)[0])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Write a NanoAOD-like ROOT file (signal or background) with uproot."
    )
    parser.add_argument("out", type=Path, help="output ROOT file (local path)")
    parser.add_argument("--events", type=int, default=100_000, help="number of events")
    parser.add_argument("--kind", choices=KINDS, default="background")
    parser.add_argument("--compression", choices=[*_CODEC, "none"], default="zlib")
    parser.add_argument(
        "--level", type=int, default=None, help="compression level (ROOT's default)"
    )
    parser.add_argument("--format", dest="fmt", choices=FORMATS, default="ttree")
    parser.add_argument(
        "--step", type=int, default=100_000, help="events generated/written at once"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="non-negative; same seed, same file content"
    )
    parser.add_argument("--tree", default=TREE, help="tree / RNTuple name")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        summary = write_file(
            args.out, args.events, kind=args.kind, compression=args.compression,
            level=args.level, fmt=args.fmt, step=args.step, seed=args.seed, tree=args.tree,
        )  # fmt: skip
    except ValueError as err:
        print(f"generate.py: error: {err}", file=sys.stderr)
        return 2
    rate = summary["events"] / max(summary["seconds"], 1e-9)
    print(
        f"{summary['path']}: {summary['events']} {summary['kind']} events, {summary['format']}, "
        f"{summary['compression']}({summary['level']}), {summary['bytes'] / 1e6:.1f} MB, "
        f"{summary['seconds']:.1f} s, {rate:,.0f} events/s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
