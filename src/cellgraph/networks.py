"""Prior gene networks: parse DoRothEA, TRRUST, HuRI and STRING and map their ids to HGNC symbols.

Sources (all vendored in ``resources/demo/networks``):

- **DoRothEA** regulons (Garcia-Alonso et al., *Genome Research* 2019): ``tf, confidence, target, mor``;
  confidence A (curated + ChIP + motif ...) to E (least support); ``mor`` is the mode of regulation
  (+1 activation, -1 repression), stored as the edge ``weight``. Directed TF -> target.
- **TRRUST** v2 (Han et al., *Nucleic Acids Research* 2018): ``TF, target, mode, PMIDs`` without header;
  weight 1.0, directed TF -> target.
- **HuRI** (Luck et al., *Nature* 2020) binary protein-protein interactions: ``protein1, protein2``
  Ensembl gene ids (ENSG); weight 1.0, undirected.
- **STRING** v12 human (Szklarczyk et al., *Nucleic Acids Research* 2023) edges ``protein1, protein2
  [, symbol1, symbol2]`` with ``9606.ENSP`` ids, plus STRING ``protein.info``; weight 1.0, undirected.

Identifier mapping (Bioconductor ``org.Hs.eg.db`` tables in ``resources/demo/networks/idmap``):

- The approved HGNC symbol universe is the union of the ``symbol`` columns of the three id maps.
- Symbol sources (DoRothEA, TRRUST): a name that is an approved symbol is kept (route ``approved``);
  else it is looked up in the alias map (``alias``; an alias of more than one symbol is *ambiguous*);
  else a unique case-insensitive match of an approved symbol (``case``; DoRothEA writes ``C12ORF76`` for
  ``C12orf76``); else it is *unmapped*.
- HuRI: ENSG -> symbol with ``hs_ensg_entrez_symbol.tsv`` (an ENSG with more than one symbol is ambiguous).
- STRING: the ``9606.`` prefix is stripped and the ENSP mapped with ``hs_ensp_entrez_symbol.tsv``
  (``ensp_map``); an ENSP absent there (or ambiguous there) falls back to the STRING ``preferred_name``
  mapped like a symbol (``info_approved``, ``info_alias``, ``info_case``). The edge file's own
  ``symbol1/symbol2`` columns are only compared with the result (``symbol_column_check`` in the report).

Rows are dropped, in this order of precedence, for: ``below_confidence`` (DoRothEA letters not in
``--dorothea-confidence``), ``unmapped`` / ``ambiguous`` (the first of source, target that fails), ``self_loop``
(source == target after mapping), ``duplicate`` (an edge already kept for the graph; undirected edges are
stored once with ``source < target``). Every dropped row, duplicates and self-loops included, is one row
of ``rejects.tsv.gz`` (``graph, file, line, field, value, reason``; ``line`` is the 1-based line of the input
file, header = line 1). For self-loops and duplicates ``field`` is ``source,target`` and ``value`` the
mapped ``SOURCE|TARGET``.
"""

from __future__ import annotations

import argparse
import gzip
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from .errors import InputError
from .io import atomic_path, require_file, write_json

log = logging.getLogger(__name__)

__all__ = [
    "SymbolMaps",
    "load_symbol_maps",
    "map_symbols",
    "read_table",
    "read_edges",
    "build_networks",
    "EDGE_COLUMNS",
    "GRAPHS",
]

EDGE_COLUMNS = ["source", "target", "weight", "graph", "directed"]
GRAPHS = ["dorothea", "trrust", "huri", "string"]
CONFIDENCE_LEVELS = ("A", "B", "C", "D", "E")
REASONS = ["below_confidence", "unmapped", "ambiguous", "self_loop", "duplicate"]
REJECT_COLUMNS = ["graph", "file", "line", "field", "value", "reason"]
TRRUST_MODES = {"0", "1", "2", "Activation", "Repression", "Unknown"}
UNMAPPED_EXAMPLES = 20


# --------------------------------------------------------------------------------------------------
# Reading tab-separated files with line-numbered validation
# --------------------------------------------------------------------------------------------------


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            return fh.read()
    except (OSError, EOFError) as err:
        raise InputError(f"{what} {path}: cannot be read ({err})") from err


def read_table(
    path: str | Path,
    what: str,
    required: list[str],
    *,
    header: bool = True,
    names: list[str] | None = None,
    rename: dict[str, str] | None = None,
) -> pd.DataFrame:
    """Read a tab-separated (optionally gzipped) table as strings, checking every line's field count.

    Parameters
    ----------
    path : path of the file (gzip detected from its magic bytes).
    what : name of the input for messages (for example ``"DoRothEA"``).
    required : columns that must be present and non-empty on every row.
    header : whether line 1 is a header; if not, ``names`` gives the columns.
    names : column names of a header-less file (its field count).
    rename : header names to rename before the check (for example ``#string_protein_id``).

    Returns
    -------
    pandas.DataFrame [rows, columns], dtype str (no NA conversion: ``NA`` stays a string), with an extra
    int64 column ``_line``: the 1-based line number of the row in the file.

    Raises
    ------
    InputError
        Missing file; unreadable or non-UTF-8 content; a header without a required column; a line
        whose number of tab-separated fields differs from the header's (or ``len(names)``); an empty
        required field. The message names the file and the line.
    """
    import csv
    import io

    path = require_file(path, what)
    data = _read_bytes(path, what)
    if header:
        first = data.split(b"\n", 1)[0].rstrip(b"\r")
        try:
            cols = first.decode("utf-8").split("\t")
        except UnicodeDecodeError as err:
            raise InputError(f"{what} {path}: line 1: header is not UTF-8 text ({err})") from err
        cols = [(rename or {}).get(c, c) for c in cols]
        missing = [c for c in required if c not in cols]
        if missing:
            raise InputError(
                f"{what} {path}: line 1: header lacks column(s) {missing}; expected tab-separated "
                f"columns including {required}, found {cols}"
            )
        if len(set(cols)) != len(cols):
            raise InputError(f"{what} {path}: line 1: duplicate column names in header {cols}")
    else:
        assert names is not None
        cols = list(names)
    expected = len(cols)

    # Field count of every line, vectorised over the raw bytes (lines end at b"\n").
    buf = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(buf == 10)
    if buf.size and buf[-1] != 10:
        ends = np.append(ends, buf.size)
    n_lines = ends.size
    if n_lines == 0 or (header and n_lines == 1):
        raise InputError(f"{what} {path}: no data rows")
    tabs = np.flatnonzero(buf == 9)
    fields = np.bincount(np.searchsorted(ends, tabs), minlength=n_lines) + 1
    bad = np.flatnonzero(fields != expected)
    if bad.size:
        i = int(bad[0])
        start = int(ends[i - 1]) + 1 if i else 0
        blank = int(ends[i]) - start <= 1 and fields[i] == 1
        raise InputError(
            f"{what} {path}: line {i + 1}: expected {expected} tab-separated fields "
            f"({', '.join(cols)}), found {'a blank line' if blank else fields[i]}"
            + (f" ({bad.size} malformed lines in total)" if bad.size > 1 else "")
        )
    try:
        df = pd.read_csv(
            io.BytesIO(data),
            sep="\t",
            header=None,
            skiprows=1 if header else 0,
            names=cols,
            dtype=str,
            keep_default_na=False,
            na_filter=False,
            quoting=csv.QUOTE_NONE,
            skip_blank_lines=False,
            engine="c",
            encoding="utf-8",
        )
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError) as err:
        raise InputError(f"{what} {path}: cannot be parsed as a tab-separated table ({err})") from err
    first_line = 2 if header else 1
    if len(df) != n_lines - (1 if header else 0):  # pragma: no cover - guarded by the field count
        raise InputError(f"{what} {path}: parsed {len(df)} rows from {n_lines} lines")
    df["_line"] = np.arange(first_line, first_line + len(df), dtype=np.int64)
    for c in required:
        empty = np.flatnonzero(df[c].str.strip().to_numpy() == "")
        if empty.size:
            raise InputError(f"{what} {path}: line {df['_line'].iat[empty[0]]}: field {c!r} is empty")
    return df


# --------------------------------------------------------------------------------------------------
# Identifier maps
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SymbolMaps:
    """HGNC symbol maps built from the ``org.Hs.eg.db`` tables.

    Attributes
    ----------
    approved : frozenset of approved HGNC symbols (union of the ``symbol`` columns of the three maps).
    alias : dict alias -> symbol, only aliases with exactly one symbol.
    alias_ambiguous : dict alias -> sorted tuple of its (>1) symbols.
    upper : dict upper-cased approved symbol -> symbol, where the upper-case form is unique.
    ensg, ensp : dict ENSG / ENSP id -> symbol (ids with exactly one symbol).
    ensg_ambiguous, ensp_ambiguous : dict id -> sorted tuple of its (>1) symbols.
    """

    approved: frozenset
    alias: dict
    alias_ambiguous: dict
    upper: dict
    ensg: dict
    ensg_ambiguous: dict
    ensp: dict
    ensp_ambiguous: dict


def _unique_map(df: pd.DataFrame, key: str) -> tuple[dict, dict]:
    pairs = df[[key, "symbol"]].drop_duplicates()
    n = pairs.groupby(key, sort=False)["symbol"].transform("size")
    uniq = pairs[n == 1]
    amb = pairs[n > 1].groupby(key, sort=True)["symbol"].agg(lambda s: tuple(sorted(s)))
    return dict(zip(uniq[key], uniq["symbol"])), amb.to_dict()


def load_symbol_maps(alias: str | Path, ensg: str | Path, ensp: str | Path) -> SymbolMaps:
    """Load the three HGNC id maps.

    Parameters
    ----------
    alias : ``hs_alias_symbol.tsv`` (columns ``alias_symbol, symbol``).
    ensg : ``hs_ensg_entrez_symbol.tsv`` (columns ``ensg, entrez, symbol``).
    ensp : ``hs_ensp_entrez_symbol.tsv`` (columns ``ensp, entrez, symbol``).

    Returns
    -------
    SymbolMaps. Values such as ``NA`` are kept as strings (``NA`` is an alias of ``XK``).

    Raises
    ------
    InputError
        A file is missing, malformed (see :func:`read_table`) or lacks its columns.
    """
    al = read_table(alias, "alias map", ["alias_symbol", "symbol"])
    eg = read_table(ensg, "ENSG map", ["ensg", "symbol"])
    ep = read_table(ensp, "ENSP map", ["ensp", "symbol"])
    approved = frozenset(al["symbol"]) | frozenset(eg["symbol"]) | frozenset(ep["symbol"])
    alias_map, alias_amb = _unique_map(al, "alias_symbol")
    ensg_map, ensg_amb = _unique_map(eg, "ensg")
    ensp_map, ensp_amb = _unique_map(ep, "ensp")
    up = pd.Series(sorted(approved))
    key = up.str.upper()
    counts = key.map(key.value_counts())
    upper = dict(zip(key[counts == 1], up[counts == 1]))
    return SymbolMaps(approved, alias_map, alias_amb, upper, ensg_map, ensg_amb, ensp_map, ensp_amb)


def map_symbols(names: Iterable[str], maps: SymbolMaps) -> tuple[np.ndarray, np.ndarray]:
    """Map gene names to approved HGNC symbols.

    Parameters
    ----------
    names : iterable of str [N].
    maps : from :func:`load_symbol_maps`.

    Returns
    -------
    (symbols, routes): object arrays [N]. ``symbols[i]`` is the symbol or ``""``; ``routes[i]`` is one of
    ``approved``, ``alias``, ``case`` (mapped) or ``ambiguous``, ``unmapped``.
    """
    names = list(names)
    sym = np.empty(len(names), dtype=object)
    route = np.empty(len(names), dtype=object)
    for i, n in enumerate(names):
        if n in maps.approved:
            sym[i], route[i] = n, "approved"
        elif n in maps.alias:
            sym[i], route[i] = maps.alias[n], "alias"
        elif n in maps.alias_ambiguous:
            sym[i], route[i] = "", "ambiguous"
        elif n.upper() in maps.upper:
            sym[i], route[i] = maps.upper[n.upper()], "case"
        else:
            sym[i], route[i] = "", "unmapped"
    return sym, route


def _map_ids(values: pd.Series, id_map: dict, ambiguous: dict, route_name: str) -> tuple[np.ndarray, np.ndarray]:
    sym = np.array([id_map.get(v, "") for v in values], dtype=object)
    route = np.where(sym != "", route_name, np.where(values.isin(ambiguous).to_numpy(), "ambiguous", "unmapped"))
    return sym, route.astype(object)


def _map_string_ids(
    ids: pd.Series, info: pd.DataFrame, maps: SymbolMaps
) -> tuple[np.ndarray, np.ndarray]:
    """ENSP (``9606.`` stripped) -> symbol by the ENSP map, else by STRING's preferred_name."""
    ensp = ids.str.replace(r"^9606\.", "", regex=True)
    sym, route = _map_ids(ensp, maps.ensp, maps.ensp_ambiguous, "ensp_map")
    pref = dict(zip(info["#string_protein_id"].str.replace(r"^9606\.", "", regex=True), info["preferred_name"]))
    todo = np.flatnonzero(sym == "")
    if todo.size:
        names = [pref.get(ensp.iat[i], "") for i in todo]
        has = np.array([n != "" for n in names], dtype=bool)
        psym, proute = map_symbols([n for n in names if n], maps)
        idx = todo[has]
        ok = psym != ""
        sym[idx[ok]] = psym[ok]
        route[idx[ok]] = np.array(["info_" + r for r in proute[ok]], dtype=object)
        amb = idx[proute == "ambiguous"]
        route[amb] = "ambiguous"
    return sym, route


# --------------------------------------------------------------------------------------------------
# Per-source edge filtering
# --------------------------------------------------------------------------------------------------


def _id_stats(values: pd.Series, sym: np.ndarray, route: np.ndarray) -> dict:
    """Counts of distinct ids by mapping route."""
    d = pd.DataFrame({"id": values.to_numpy(), "route": route}).drop_duplicates("id")
    counts = d["route"].value_counts()
    mapped_by = {r: int(c) for r, c in counts.items() if r not in ("ambiguous", "unmapped")}
    return {
        "distinct": int(len(d)),
        "mapped": int(sum(mapped_by.values())),
        "mapped_by": dict(sorted(mapped_by.items())),
        "ambiguous": int(counts.get("ambiguous", 0)),
        "unmapped": int(counts.get("unmapped", 0)),
        "ambiguous_examples": sorted(d.loc[d["route"] == "ambiguous", "id"])[:UNMAPPED_EXAMPLES],
        "unmapped_examples": sorted(d.loc[d["route"] == "unmapped", "id"])[:UNMAPPED_EXAMPLES],
    }


def _filter_edges(
    graph: str,
    file: Path,
    rows: pd.DataFrame,
    fields: tuple[str, str],
    mapped: dict[str, tuple[np.ndarray, np.ndarray]],
    weight: np.ndarray,
    directed: bool,
    pre_reason: np.ndarray | None = None,
    pre_field: str | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Apply drop reasons in order; return (edges, rejects, dropped counts)."""
    n = len(rows)
    reason = np.full(n, "", dtype=object) if pre_reason is None else pre_reason.astype(object).copy()
    rfield = np.where(reason != "", pre_field or "", "").astype(object)
    rvalue = np.where(reason != "", rows[pre_field].to_numpy() if pre_field else "", "").astype(object)
    for f in fields:  # first failing field wins
        _, route = mapped[f]
        bad = (reason == "") & np.isin(route, ["unmapped", "ambiguous"])
        reason[bad] = route[bad]
        rfield[bad] = f
        rvalue[bad] = rows[f].to_numpy()[bad]
    src, dst = mapped[fields[0]][0], mapped[fields[1]][0]
    if not directed:
        src, dst = np.where(src <= dst, src, dst), np.where(src <= dst, dst, src)
    pair = np.array([f"{a}|{b}" for a, b in zip(src, dst)], dtype=object)
    loop = (reason == "") & (src == dst)
    reason[loop] = "self_loop"
    alive = reason == ""
    dup = np.zeros(n, dtype=bool)
    dup[alive] = pd.Series(pair[alive]).duplicated(keep="first").to_numpy()
    reason[dup] = "duplicate"
    both = loop | dup
    rfield[both] = f"{fields[0]},{fields[1]}"
    rvalue[both] = pair[both]
    keep = reason == ""
    edges = pd.DataFrame(
        {
            "source": src[keep].astype(str),
            "target": dst[keep].astype(str),
            "weight": np.asarray(weight, dtype=np.float64)[keep],
            "graph": graph,
            "directed": directed,
        }
    )
    drop = ~keep
    rejects = pd.DataFrame(
        {
            "graph": graph,
            "file": str(file),
            "line": rows["_line"].to_numpy()[drop],
            "field": rfield[drop],
            "value": rvalue[drop],
            "reason": reason[drop],
        }
    )
    counts = pd.Series(reason[drop]).value_counts()
    dropped = {r: int(counts.get(r, 0)) for r in REASONS if r != "below_confidence" or pre_reason is not None}
    assert len(edges) + sum(dropped.values()) == n
    return edges, rejects, dropped


def _source_report(file: Path, rows: pd.DataFrame, edges: pd.DataFrame, dropped: dict, ids: dict) -> dict:
    return {
        "file": str(file),
        "rows_read": int(len(rows)),
        "edges_kept": int(len(edges)),
        "dropped": dropped,
        "dropped_total": int(sum(dropped.values())),
        "nodes": int(len(pd.unique(np.concatenate([edges["source"].to_numpy(), edges["target"].to_numpy()])))),
        "ids": ids,
    }


def _stack_ids(rows: pd.DataFrame, fields: tuple[str, str], mapped: dict) -> dict:
    values = pd.concat([rows[f] for f in fields], ignore_index=True)
    sym = np.concatenate([mapped[f][0] for f in fields])
    route = np.concatenate([mapped[f][1] for f in fields])
    return _id_stats(values, sym, route)


def _dorothea(path, maps: SymbolMaps, confidence: list[str]):
    what = "DoRothEA"
    rows = read_table(path, what, ["tf", "confidence", "target", "mor"])
    conf = rows["confidence"].str.strip()
    bad = np.flatnonzero(~conf.isin(CONFIDENCE_LEVELS).to_numpy())
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{what} {path}: line {rows['_line'].iat[i]}: field 'confidence' is {rows['confidence'].iat[i]!r}; "
            f"expected one of {list(CONFIDENCE_LEVELS)}"
        )
    mor = pd.to_numeric(rows["mor"], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(mor))
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{what} {path}: line {rows['_line'].iat[i]}: field 'mor' is {rows['mor'].iat[i]!r}; "
            "expected a finite number (mode of regulation, +1 or -1)"
        )
    mapped = {f: map_symbols(rows[f], maps) for f in ("tf", "target")}
    pre = np.where(conf.isin(confidence).to_numpy(), "", "below_confidence")
    edges, rejects, dropped = _filter_edges(
        "dorothea", Path(path), rows, ("tf", "target"), mapped, mor, True, pre, "confidence"
    )
    rep = _source_report(Path(path), rows, edges, dropped, _stack_ids(rows, ("tf", "target"), mapped))
    rep["confidence_kept"] = sorted(confidence)
    rep["rows_by_confidence"] = {k: int(v) for k, v in sorted(conf.value_counts().items())}
    rep["ids"]["counted_over"] = "all rows (every confidence level)"
    tf_sym, tf_route = mapped["tf"]
    return edges, rejects, rep, _tfs(rows["tf"], tf_sym, tf_route)


def _tfs(names: pd.Series, sym: np.ndarray, route: np.ndarray) -> tuple[set, list]:
    ok = sym != ""
    return set(sym[ok]), sorted(set(names.to_numpy()[~ok]))


def _trrust(path, maps: SymbolMaps):
    what = "TRRUST"
    rows = read_table(path, what, ["TF", "target", "mode"], header=False, names=["TF", "target", "mode", "PMIDs"])
    bad = np.flatnonzero(~rows["mode"].isin(TRRUST_MODES).to_numpy())
    if bad.size:
        i = bad[0]
        raise InputError(
            f"{what} {path}: line {rows['_line'].iat[i]}: field 'mode' is {rows['mode'].iat[i]!r}; "
            f"expected one of {sorted(TRRUST_MODES)}"
        )
    mapped = {f: map_symbols(rows[f], maps) for f in ("TF", "target")}
    edges, rejects, dropped = _filter_edges(
        "trrust", Path(path), rows, ("TF", "target"), mapped, np.ones(len(rows)), True
    )
    rep = _source_report(Path(path), rows, edges, dropped, _stack_ids(rows, ("TF", "target"), mapped))
    return edges, rejects, rep, _tfs(rows["TF"], *mapped["TF"])


def _huri(path, maps: SymbolMaps):
    rows = read_table(path, "HuRI", ["protein1", "protein2"])
    mapped = {f: _map_ids(rows[f].str.strip(), maps.ensg, maps.ensg_ambiguous, "ensg_map") for f in ("protein1", "protein2")}
    edges, rejects, dropped = _filter_edges(
        "huri", Path(path), rows, ("protein1", "protein2"), mapped, np.ones(len(rows)), False
    )
    rep = _source_report(Path(path), rows, edges, dropped, _stack_ids(rows, ("protein1", "protein2"), mapped))
    return edges, rejects, rep


def _string(path, info_path, maps: SymbolMaps):
    rows = read_table(path, "STRING", ["protein1", "protein2"])
    info = read_table(
        info_path, "STRING protein.info", ["#string_protein_id", "preferred_name"],
        rename={"string_protein_id": "#string_protein_id"},
    )
    mapped = {f: _map_string_ids(rows[f].str.strip(), info, maps) for f in ("protein1", "protein2")}
    edges, rejects, dropped = _filter_edges(
        "string", Path(path), rows, ("protein1", "protein2"), mapped, np.ones(len(rows)), False
    )
    rep = _source_report(Path(path), rows, edges, dropped, _stack_ids(rows, ("protein1", "protein2"), mapped))
    rep["protein_info"] = {"file": str(info_path), "proteins": int(len(info))}
    # Cross-check against the file's own symbol columns, where present.
    check = {"compared": 0, "agree": 0, "disagree": 0, "disagree_examples": []}
    if {"symbol1", "symbol2"} <= set(rows.columns):
        ids = pd.concat([rows["protein1"], rows["protein2"]], ignore_index=True)
        given = pd.concat([rows["symbol1"], rows["symbol2"]], ignore_index=True)
        ours = pd.Series(np.concatenate([mapped["protein1"][0], mapped["protein2"][0]]))
        d = pd.DataFrame({"id": ids, "given": given, "ours": ours}).drop_duplicates("id")
        d = d[(d["given"] != "") & (d["ours"] != "")]
        dis = d[d["given"] != d["ours"]]
        check = {
            "compared": int(len(d)),
            "agree": int(len(d) - len(dis)),
            "disagree": int(len(dis)),
            "disagree_examples": [f"{r.id}:{r.given}->{r.ours}" for r in dis.head(UNMAPPED_EXAMPLES).itertuples()],
        }
    rep["symbol_column_check"] = check
    return edges, rejects, rep


# --------------------------------------------------------------------------------------------------
# Whole stage
# --------------------------------------------------------------------------------------------------


def build_networks(
    dorothea, trrust, huri, string, string_info, alias_map, ensg_map, ensp_map,
    dorothea_confidence: Iterable[str] = ("A", "B", "C"),
) -> tuple[pd.DataFrame, list[str], pd.DataFrame, dict]:
    """Parse and map all sources in memory (nothing is written).

    Returns
    -------
    edges : DataFrame [E, 5] with :data:`EDGE_COLUMNS` (str, str, float64, str, bool), graphs in the order
        dorothea, trrust, huri, string and rows in file order.
    regulators : sorted list of HGNC symbols (TFs of DoRothEA at any confidence, and of TRRUST).
    rejects : DataFrame [R, 6] with :data:`REJECT_COLUMNS`, one row per dropped input row.
    report : dict, the content of ``report.json``.

    Raises
    ------
    InputError
        A missing or malformed input (see :func:`read_table`), an unknown confidence letter or TRRUST
        mode, a non-numeric ``mor``.
    """
    t0 = time.perf_counter()
    confidence = sorted({c.strip().upper() for c in dorothea_confidence})
    unknown = [c for c in confidence if c not in CONFIDENCE_LEVELS]
    if unknown or not confidence:
        raise InputError(f"--dorothea-confidence: {unknown or 'empty'}; expected letters among {list(CONFIDENCE_LEVELS)}")
    for p, what in [(dorothea, "DoRothEA"), (trrust, "TRRUST"), (huri, "HuRI"), (string, "STRING"),
                    (string_info, "STRING protein.info"), (alias_map, "alias map"), (ensg_map, "ENSG map"),
                    (ensp_map, "ENSP map")]:
        require_file(p, what)
    maps = load_symbol_maps(alias_map, ensg_map, ensp_map)
    d_edges, d_rej, d_rep, (d_tfs, d_tf_unmapped) = _dorothea(dorothea, maps, confidence)
    t_edges, t_rej, t_rep, (t_tfs, t_tf_unmapped) = _trrust(trrust, maps)
    h_edges, h_rej, h_rep = _huri(huri, maps)
    s_edges, s_rej, s_rep = _string(string, string_info, maps)
    edges = pd.concat([d_edges, t_edges, h_edges, s_edges], ignore_index=True)
    edges = edges.astype({"source": str, "target": str, "weight": "float64", "graph": str, "directed": bool})
    rejects = pd.concat([d_rej, t_rej, h_rej, s_rej], ignore_index=True)[REJECT_COLUMNS]
    regulators = sorted(d_tfs | t_tfs)
    sources = {"dorothea": d_rep, "trrust": t_rep, "huri": h_rep, "string": s_rep}
    dropped_total = {r: int(sum(s["dropped"].get(r, 0) for s in sources.values())) for r in REASONS}
    report = {
        "stage": "networks",
        "id_maps": {
            "alias": str(alias_map), "ensg": str(ensg_map), "ensp": str(ensp_map),
            "approved_symbols": len(maps.approved),
            "aliases_unique": len(maps.alias), "aliases_ambiguous": len(maps.alias_ambiguous),
            "ensg_unique": len(maps.ensg), "ensg_ambiguous": len(maps.ensg_ambiguous),
            "ensp_unique": len(maps.ensp), "ensp_ambiguous": len(maps.ensp_ambiguous),
        },
        "sources": sources,
        "totals": {
            "rows_read": int(sum(s["rows_read"] for s in sources.values())),
            "edges_kept": int(len(edges)),
            "dropped": dropped_total,
            "rejects_rows": int(len(rejects)),
        },
        "regulators": {
            "count": len(regulators),
            "dorothea": len(d_tfs), "trrust": len(t_tfs), "both": len(d_tfs & t_tfs),
            "dorothea_only": len(d_tfs - t_tfs), "trrust_only": len(t_tfs - d_tfs),
            "unmapped_tf_names": {"dorothea": d_tf_unmapped, "trrust": t_tf_unmapped},
        },
        "rejects_note": "one rejects.tsv.gz row per dropped input row, self-loops and duplicates included",
    }
    log.info("networks parsed and mapped in %.1f s", time.perf_counter() - t0)
    return edges, regulators, rejects, report


def read_edges(path: str | Path) -> pd.DataFrame:
    """Load ``edges.parquet`` written by the networks stage and validate it.

    Returns
    -------
    DataFrame [E, 5]: ``source`` (str), ``target`` (str), ``weight`` (float64), ``graph`` (str, one of
    :data:`GRAPHS`), ``directed`` (bool).

    Raises
    ------
    InputError
        Missing or unreadable file, missing columns, wrong dtypes, unknown graph names, empty ids.
    """
    path = require_file(path, "network edges")
    try:
        df = pd.read_parquet(path)
    except Exception as err:  # noqa: BLE001 - any read failure is the user's file
        raise InputError(f"network edges {path}: cannot be read as parquet ({err})") from err
    missing = [c for c in EDGE_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"network edges {path}: missing column(s) {missing}; expected {EDGE_COLUMNS}")
    df = df[EDGE_COLUMNS]
    if not pd.api.types.is_float_dtype(df["weight"]):
        raise InputError(f"network edges {path}: column 'weight' has dtype {df['weight'].dtype}; expected float64")
    if not pd.api.types.is_bool_dtype(df["directed"]):
        raise InputError(f"network edges {path}: column 'directed' has dtype {df['directed'].dtype}; expected bool")
    for c in ("source", "target", "graph"):
        if df[c].isna().any() or (df[c].astype(str) == "").any():
            raise InputError(f"network edges {path}: column {c!r} has missing or empty values")
    unknown = sorted(set(df["graph"].astype(str)) - set(GRAPHS))
    if unknown:
        raise InputError(f"network edges {path}: unknown graph name(s) {unknown}; expected {GRAPHS}")
    return df.astype({"source": str, "target": str, "graph": str, "weight": "float64"})


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dorothea", required=True, help="DoRothEA regulons (tf, confidence, target, mor; .tsv[.gz])")
    p.add_argument("--trrust", required=True, help="TRRUST raw data (TF, target, mode, PMIDs; no header)")
    p.add_argument("--huri", required=True, help="HuRI binary PPI (protein1, protein2 as ENSG ids)")
    p.add_argument("--string", required=True, help="STRING human edges (protein1, protein2[, symbol1, symbol2])")
    p.add_argument("--string-info", required=True, help="STRING protein.info (#string_protein_id, preferred_name, ...)")
    p.add_argument("--alias-map", required=True, help="hs_alias_symbol.tsv (alias_symbol, symbol)")
    p.add_argument("--ensg-map", required=True, help="hs_ensg_entrez_symbol.tsv (ensg, entrez, symbol)")
    p.add_argument("--ensp-map", required=True, help="hs_ensp_entrez_symbol.tsv (ensp, entrez, symbol)")
    p.add_argument(
        "--dorothea-confidence", nargs="+", default=["A", "B", "C"], metavar="LETTER",
        help="DoRothEA confidence levels kept as the prior graph (default A B C)",
    )
    p.add_argument("--out-dir", required=True, help="folder for edges.parquet, regulators.txt, rejects.tsv.gz, report.json")


def run(args: argparse.Namespace) -> None:
    edges, regulators, rejects, report = build_networks(
        args.dorothea, args.trrust, args.huri, args.string, args.string_info,
        args.alias_map, args.ensg_map, args.ensp_map, args.dorothea_confidence,
    )
    out = Path(args.out_dir)
    with atomic_path(out / "edges.parquet") as tmp:
        edges.to_parquet(tmp, index=False)
    with atomic_path(out / "regulators.txt") as tmp:
        tmp.write_text("".join(f"{g}\n" for g in regulators))
    with atomic_path(out / "rejects.tsv.gz") as tmp:
        # gzip.compress with mtime=0 stores no file name or time: same input, same bytes
        tmp.write_bytes(gzip.compress(rejects.to_csv(sep="\t", index=False).encode(), compresslevel=6, mtime=0))
    write_json(out / "report.json", report)
    for g, s in report["sources"].items():
        log.info("%s: %d rows read, %d edges kept, dropped %s", g, s["rows_read"], s["edges_kept"], s["dropped"])
    log.info("%d regulators; outputs in %s", len(regulators), out)
