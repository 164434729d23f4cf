"""Prior gene networks: parse DoRothEA, TRRUST, HuRI and STRING (optionally Pathway Commons) and map their ids
to HGNC symbols.

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
- Optionally **Pathway Commons** (Rodchenkov et al., *Nucleic Acids Research* 2020) SIF ``source relation
  target`` (``resources/networks/human``): two graphs, ``pathway_commons_physical`` (undirected) and
  ``pathway_commons_regulatory`` (directed), by relation (:func:`read_pathway_commons`); weight 1.0.

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

import gzip
import logging
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, NoReturn

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io import require_file

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
    "StringLinks",
    "read_string_links",
    "read_string_actions",
    "read_sif",
    "read_biogrid",
    "read_tflink",
    "read_hint",
    "read_collectri",
    "YeastMaps",
    "load_yeast_maps",
    "map_yeast",
    "map_human",
    "load_entrez_map",
    "map_string_ids",
    "id_stats",
    "read_dorothea",
    "read_trrust",
    "read_huri",
    "read_pathway_commons",
    "PC_PHYSICAL",
    "PC_REGULATORY",
]

EDGE_COLUMNS = ["source", "target", "weight", "graph", "directed"]
GRAPHS = ["dorothea", "trrust", "huri", "string", "pathway_commons_physical", "pathway_commons_regulatory"]
#: Pathway Commons SIF relations read as each of the two Pathway Commons graphs (defaults of ``cellgraph networks``).
PC_PHYSICAL = ("in-complex-with", "interacts-with")
PC_REGULATORY = ("controls-expression-of",)
CONFIDENCE_LEVELS = ("A", "B", "C", "D", "E")
REASONS = ["below_confidence", "unmapped", "ambiguous", "self_loop", "duplicate"]
REJECT_COLUMNS = ["graph", "file", "line", "field", "value", "reason"]
TRRUST_MODES = {"0", "1", "2", "Activation", "Repression", "Unknown"}
UNMAPPED_EXAMPLES = 20


# --------------------------------------------------------------------------------------------------
# Reading tab-separated files with line-numbered validation
# --------------------------------------------------------------------------------------------------


UTF8_BOM = b"\xef\xbb\xbf"


def _read_bytes(path: Path, what: str) -> bytes:
    """The whole content of ``path``, gunzipped when it starts with the gzip magic bytes, without a leading
    UTF-8 byte-order mark (spreadsheet exports write one; it is not part of the first field).

    Raises
    ------
    InputError
        The file cannot be read, or is a truncated or corrupt gzip stream (names the file).
    """
    try:
        with open(path, "rb") as fh:
            magic = fh.read(2)
        opener = gzip.open if magic == b"\x1f\x8b" else open
        with opener(path, "rb") as fh:
            data = fh.read()
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise InputError(
            f"{what} {path}: truncated or corrupt gzip file ({err}); expected a complete gzip stream "
            "(download the file again)"
        ) from err
    except OSError as err:
        raise InputError(f"{what} {path}: cannot be read ({err})") from err
    return data[len(UTF8_BOM):] if data.startswith(UTF8_BOM) else data


def _check_utf8(data: bytes, path: Path, what: str) -> None:
    """Raise :class:`InputError` naming the line and byte of the first byte sequence that is not UTF-8."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise InputError(
            f"{what} {path}: line {line}: byte {column} ({data[err.start:err.start + 1]!r}) is not UTF-8 text; "
            "expected a UTF-8 encoded tab-separated file"
        ) from err


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
    path : path of the file (gzip detected from its magic bytes; a leading UTF-8 byte-order mark is skipped).
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
        Missing or empty file; a truncated or corrupt gzip stream; a byte that is not UTF-8 (names its
        line); a header without a required column; a line
        whose number of tab-separated fields differs from the header's (or ``len(names)``); an empty
        required field. The message names the file and the line.
    """
    path = require_file(path, what)
    data = _read_bytes(path, what)
    if not data.strip():
        raise InputError(f"{what} {path}: empty file; expected a tab-separated table"
                         + (f" with a header line ({', '.join(required)})" if header else ""))
    _check_utf8(data, path, what)
    cols = _table_columns(data, path, what, required, header, names, rename)
    n_lines = _check_field_counts(data, path, what, cols, header)
    df = _parse_table(data, path, what, cols, header, n_lines)
    _check_required_fields(df, path, what, required)
    return df


def _table_columns(
    data: bytes, path: Path, what: str, required: list[str], header: bool,
    names: list[str] | None, rename: dict[str, str] | None,
) -> list[str]:
    """Column names of a table (:func:`read_table`): its header line, renamed, checked for the ``required``
    columns and duplicates; or ``names`` for a header-less file. Raises :class:`InputError` (line 1)."""
    if header:
        cols = data.split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8").split("\t")
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
    return cols


def _check_field_counts(data: bytes, path: Path, what: str, cols: list[str], header: bool) -> int:
    """Number of lines of ``data``; raises :class:`InputError` naming the first line whose number of
    tab-separated fields is not ``len(cols)`` (or when there are no data rows)."""
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
    return n_lines


def _parse_table(data: bytes, path: Path, what: str, cols: list[str], header: bool, n_lines: int) -> pd.DataFrame:
    """``data`` (field counts already checked) as a str DataFrame with the 1-based file line in ``_line``."""
    import csv
    import io

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
    return df


def _check_required_fields(df: pd.DataFrame, path: Path, what: str, required: list[str]) -> None:
    """Raise :class:`InputError` naming the line of the first empty (blank) ``required`` field."""
    for c in required:
        empty = np.flatnonzero(df[c].str.strip().to_numpy() == "")
        if empty.size:
            raise InputError(f"{what} {path}: line {df['_line'].iat[empty[0]]}: field {c!r} is empty")


# --------------------------------------------------------------------------------------------------
# Identifier maps
# --------------------------------------------------------------------------------------------------

#: Id formats of the id columns: (regular expression, what is expected). A value of another form means
#: swapped or shifted columns, which would otherwise map nothing without an error.
ID_FORMATS = {
    "ensg": (r"^ENSG\d+(\.\d+)?$", "an Ensembl gene id such as ENSG00000121410"),
    "ensp": (r"^ENSP\d+(\.\d+)?$", "an Ensembl protein id such as ENSP00000286479"),
    "string_ensp": (r"^(\d+\.)?ENSP\d+$", "a STRING protein id such as 9606.ENSP00000281821"),
}


def _check_id_format(rows: pd.DataFrame, fields: Iterable[str], kind: str, path, what: str) -> None:
    """Raise :class:`InputError` naming the file, line and field of the first id not of format ``kind``
    (see :data:`ID_FORMATS`) when most ids of a field (more than half) are not of that format: the columns
    are swapped or shifted. A few odd ids stay rows that do not map, counted in the rejects table.
    Surrounding blanks are ignored."""
    pattern, expected = ID_FORMATS[kind]
    for f in fields:
        bad = np.flatnonzero(~rows[f].str.strip().str.match(pattern).to_numpy(dtype=bool))
        if bad.size * 2 > len(rows):
            i = int(bad[0])
            raise InputError(
                f"{what} {path}: line {rows['_line'].iat[i]}: field {f!r} is {rows[f].iat[i]!r}; expected {expected}"
                f" ({bad.size} such values; are the columns swapped?)"
            )


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
        A file is missing, malformed (see :func:`read_table`) or lacks its columns; an ``ensg`` / ``ensp``
        value that is not an Ensembl gene / protein id (swapped columns).
    """
    al = read_table(alias, "alias map", ["alias_symbol", "symbol"])
    eg = read_table(ensg, "ENSG map", ["ensg", "symbol"])
    ep = read_table(ensp, "ENSP map", ["ensp", "symbol"])
    _check_id_format(eg, ["ensg"], "ensg", ensg, "ENSG map")
    _check_id_format(ep, ["ensp"], "ensp", ensp, "ENSP map")
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


def map_string_ids(
    ids: pd.Series, info: pd.DataFrame, maps: SymbolMaps
) -> tuple[np.ndarray, np.ndarray]:
    """Map STRING protein ids to HGNC symbols: ENSP (``9606.`` stripped) -> symbol by the ENSP map, else
    STRING's ``preferred_name`` mapped like a symbol (module docstring, "Identifier mapping").

    Parameters
    ----------
    ids : Series of str [N]
        STRING protein ids such as ``9606.ENSP00000281821`` (the prefix is optional).
    info : DataFrame
        STRING ``protein.info`` as :func:`read_table` returns it, with columns ``#string_protein_id`` and
        ``preferred_name``.
    maps : SymbolMaps
        From :func:`load_symbol_maps`.

    Returns
    -------
    (symbols, routes) : object arrays [N]
        ``symbols[i]`` is the HGNC symbol or ``""``; ``routes[i]`` is ``ensp_map``, ``info_approved``,
        ``info_alias``, ``info_case`` (mapped) or ``ambiguous``, ``unmapped``.
    """
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


def id_stats(values: pd.Series, sym: np.ndarray, route: np.ndarray) -> dict:
    """Counts of distinct ids by mapping route (the ``ids`` entry of a source in ``report.json``).

    Parameters
    ----------
    values : Series of str [N]
        Raw ids, one per mapped value (an id listed several times counts once: its first route).
    sym : object array [N]
        Mapped symbols (unused; kept for the call shape of the mappers' output).
    route : object array [N]
        Mapping route of each value (as :func:`map_symbols`, :func:`map_string_ids`, :func:`map_human` or
        :func:`map_yeast` return); ``ambiguous`` and ``unmapped`` are not mapped.

    Returns
    -------
    dict
        ``distinct``, ``mapped``, ``mapped_by`` (route -> count, sorted), ``ambiguous``, ``unmapped`` (counts
        of distinct ids) and ``ambiguous_examples``, ``unmapped_examples`` (the first
        :data:`UNMAPPED_EXAMPLES` ids, sorted).
    """
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
    return id_stats(values, sym, route)


def read_dorothea(path, maps: SymbolMaps, confidence: list[str]):
    """Read DoRothEA regulons and map them to HGNC symbols (Garcia-Alonso et al., *Genome Research* 2019).

    Parameters
    ----------
    path : str or Path
        Tab-separated (optionally gzipped) table with columns ``tf, confidence, target, mor``.
    maps : SymbolMaps
        From :func:`load_symbol_maps`.
    confidence : list of str
        Confidence letters kept (among :data:`CONFIDENCE_LEVELS`); other rows are ``below_confidence``.

    Returns
    -------
    edges : DataFrame [E, 5]
        :data:`EDGE_COLUMNS`, graph ``dorothea``, directed TF -> target, ``weight`` = ``mor`` (+1 / -1).
    rejects : DataFrame [R, 6]
        :data:`REJECT_COLUMNS`, one row per dropped input row.
    report : dict
        The source's entry of ``report.json`` (rows, kept edges, drop reasons, id statistics over all rows,
        rows per confidence letter).
    (tfs, unmapped_tf_names) : (set of str, sorted list of str)
        Mapped TF symbols (any confidence) and TF names that did not map.

    Raises
    ------
    InputError
        A missing or malformed file (see :func:`read_table`), a confidence letter not in
        :data:`CONFIDENCE_LEVELS`, a ``mor`` that is not a finite number (each naming the line).
    """
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


def read_trrust(path, maps: SymbolMaps):
    """Read TRRUST v2 raw data and map it to HGNC symbols (Han et al., *Nucleic Acids Research* 2018).

    Parameters
    ----------
    path : str or Path
        Tab-separated file without header: ``TF, target, mode, PMIDs``.
    maps : SymbolMaps
        From :func:`load_symbol_maps`.

    Returns
    -------
    edges : DataFrame [E, 5]
        :data:`EDGE_COLUMNS`, graph ``trrust``, directed TF -> target, weight 1.0.
    rejects : DataFrame [R, 6]
        :data:`REJECT_COLUMNS`, one row per dropped input row.
    report : dict
        The source's entry of ``report.json``.
    (tfs, unmapped_tf_names) : (set of str, sorted list of str)
        Mapped TF symbols and TF names that did not map.

    Raises
    ------
    InputError
        A missing or malformed file (see :func:`read_table`), a ``mode`` not in :data:`TRRUST_MODES`
        (naming the line).
    """
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


def read_huri(path, maps: SymbolMaps):
    """Read HuRI binary protein-protein interactions and map ENSG ids to HGNC symbols (Luck et al., *Nature*
    2020).

    Parameters
    ----------
    path : str or Path
        Tab-separated file with header ``protein1, protein2`` (Ensembl gene ids).
    maps : SymbolMaps
        From :func:`load_symbol_maps` (its ENSG map; an ENSG of several symbols is ambiguous).

    Returns
    -------
    edges : DataFrame [E, 5]
        :data:`EDGE_COLUMNS`, graph ``huri``, undirected (stored once with ``source < target``), weight 1.0.
    rejects : DataFrame [R, 6]
        :data:`REJECT_COLUMNS`, one row per dropped input row.
    report : dict
        The source's entry of ``report.json``.

    Raises
    ------
    InputError
        A missing or malformed file (see :func:`read_table`); ids that are mostly not ENSG ids (swapped
        columns).
    """
    rows = read_table(path, "HuRI", ["protein1", "protein2"])
    _check_id_format(rows, ["protein1", "protein2"], "ensg", path, "HuRI")
    mapped = {f: _map_ids(rows[f].str.strip(), maps.ensg, maps.ensg_ambiguous, "ensg_map") for f in ("protein1", "protein2")}
    edges, rejects, dropped = _filter_edges(
        "huri", Path(path), rows, ("protein1", "protein2"), mapped, np.ones(len(rows)), False
    )
    rep = _source_report(Path(path), rows, edges, dropped, _stack_ids(rows, ("protein1", "protein2"), mapped))
    return edges, rejects, rep


def read_pathway_commons(path, maps: SymbolMaps, physical: Iterable[str] = PC_PHYSICAL,
                         regulatory: Iterable[str] = PC_REGULATORY):
    """Read a Pathway Commons SIF and map it to HGNC symbols (Rodchenkov et al., *Nucleic Acids Research* 2020).

    Rows whose relation is in ``physical`` become the undirected graph ``pathway_commons_physical``; rows
    in ``regulatory`` the directed graph ``pathway_commons_regulatory`` (source controls the target's
    expression). Rows of the other relations (for example ``chemical-affects``, ``catalysis-precedes``)
    belong to neither graph: they are counted per relation in the report (``relations_not_used``), not
    rejected.

    Parameters
    ----------
    path : str or Path
        Tab-separated ``source relation target`` without header (``PathwayCommons*.hgnc.sif[.gz]``).
    maps : SymbolMaps
        From :func:`load_symbol_maps` (names are HGNC symbols or aliases; CHEBI ids do not map).
    physical, regulatory : iterables of str
        Relations of each graph (disjoint).

    Returns
    -------
    edges : DataFrame [E, 5]
        :data:`EDGE_COLUMNS`, the physical graph's rows (``source < target``) then the regulatory graph's,
        weight 1.0.
    rejects : DataFrame [R, 6]
        :data:`REJECT_COLUMNS`, one row per dropped row of either graph (unmapped, ambiguous, self-loop,
        duplicate).
    report : dict
        ``{"pathway_commons_physical": ..., "pathway_commons_regulatory": ...}`` source entries, each with
        ``relations`` and ``relations_not_used`` (relation -> rows of the file).

    Raises
    ------
    InputError
        A missing or malformed file (see :func:`read_table`); a relation in both lists.
    """
    physical, regulatory = sorted(set(physical)), sorted(set(regulatory))
    both = sorted(set(physical) & set(regulatory))
    if both:
        raise InputError(f"Pathway Commons relations {both} are both physical and regulatory; expected disjoint lists")
    rows = read_sif(path)
    counts = rows["relation"].value_counts()
    edges, rejects, report = [], [], {}
    for graph, relations, directed in (("pathway_commons_physical", physical, False),
                                       ("pathway_commons_regulatory", regulatory, True)):
        sub = rows[rows["relation"].isin(relations)].reset_index(drop=True)
        mapped = {f: map_symbols(sub[f], maps) for f in ("source", "target")}
        e, r, dropped = _filter_edges(graph, Path(path), sub, ("source", "target"), mapped, np.ones(len(sub)),
                                      directed)
        rep = _source_report(Path(path), sub, e, dropped, _stack_ids(sub, ("source", "target"), mapped))
        rep["relations"] = {k: int(counts.get(k, 0)) for k in relations}
        rep["relations_not_used"] = {k: int(v) for k, v in counts.items() if k not in physical + regulatory}
        edges.append(e)
        rejects.append(r)
        report[graph] = rep
    return pd.concat(edges, ignore_index=True), pd.concat(rejects, ignore_index=True), report


def _string(path, info_path, maps: SymbolMaps):
    rows = read_table(path, "STRING", ["protein1", "protein2"])
    _check_id_format(rows, ["protein1", "protein2"], "string_ensp", path, "STRING")
    info = read_table(
        info_path, "STRING protein.info", ["#string_protein_id", "preferred_name"],
        rename={"string_protein_id": "#string_protein_id"},
    )
    mapped = {f: map_string_ids(rows[f].str.strip(), info, maps) for f in ("protein1", "protein2")}
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
    dorothea_confidence: Iterable[str] = ("A", "B", "C"), pathway_commons=None,
    pc_physical: Iterable[str] = PC_PHYSICAL, pc_regulatory: Iterable[str] = PC_REGULATORY,
) -> tuple[pd.DataFrame, list[str], pd.DataFrame, dict]:
    """Parse and map all sources in memory (nothing is written).

    ``pathway_commons`` (optional, a SIF path) adds the graphs of :func:`read_pathway_commons` with the
    relations ``pc_physical`` and ``pc_regulatory``; its TFs do not join the regulators.

    Parameters
    ----------
    dorothea, trrust, huri, string, string_info : str or Path
        DoRothEA regulons, TRRUST raw data, HuRI binary PPI, STRING human edges and STRING protein.info
        (formats in the module docstring; gzip detected from the magic bytes).
    alias_map, ensg_map, ensp_map : str or Path
        The org.Hs.eg.db id maps ``hs_alias_symbol.tsv``, ``hs_ensg_entrez_symbol.tsv``,
        ``hs_ensp_entrez_symbol.tsv``.
    dorothea_confidence : iterable of str
        DoRothEA confidence letters kept (among :data:`CONFIDENCE_LEVELS`; case and spaces ignored).
    pathway_commons : str or Path, optional
        Pathway Commons SIF with HGNC symbols; None adds no Pathway Commons graph.
    pc_physical, pc_regulatory : iterable of str
        SIF relations of ``pathway_commons_physical`` and ``pathway_commons_regulatory``.

    Returns
    -------
    edges : DataFrame [E, 5] with :data:`EDGE_COLUMNS` (str, str, float64, str, bool), graphs in the order
        dorothea, trrust, huri, string (then pathway_commons_physical, pathway_commons_regulatory) and rows
        in file order.
    regulators : sorted list of HGNC symbols (TFs of DoRothEA at any confidence, and of TRRUST).
    rejects : DataFrame [R, 6] with :data:`REJECT_COLUMNS`, one row per dropped input row.
    report : dict, the content of ``report.json``.

    Raises
    ------
    InputError
        A missing or malformed input (see :func:`read_table`), an unknown confidence letter or TRRUST
        mode, a non-numeric ``mor``, a HuRI / STRING / id-map id of the wrong form (swapped columns).
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
    d_edges, d_rej, d_rep, (d_tfs, d_tf_unmapped) = read_dorothea(dorothea, maps, confidence)
    t_edges, t_rej, t_rep, (t_tfs, t_tf_unmapped) = read_trrust(trrust, maps)
    h_edges, h_rej, h_rep = read_huri(huri, maps)
    s_edges, s_rej, s_rep = _string(string, string_info, maps)
    parts, rej_parts = [d_edges, t_edges, h_edges, s_edges], [d_rej, t_rej, h_rej, s_rej]
    sources = {"dorothea": d_rep, "trrust": t_rep, "huri": h_rep, "string": s_rep}
    if pathway_commons is not None:
        p_edges, p_rej, p_rep = read_pathway_commons(require_file(pathway_commons, "Pathway Commons SIF"), maps,
                                                     pc_physical, pc_regulatory)
        parts.append(p_edges)
        rej_parts.append(p_rej)
        sources.update(p_rep)
    edges = pd.concat(parts, ignore_index=True)
    edges = edges.astype({"source": str, "target": str, "weight": "float64", "graph": str, "directed": bool})
    rejects = pd.concat(rej_parts, ignore_index=True)[REJECT_COLUMNS]
    regulators = sorted(d_tfs | t_tfs)
    report = _networks_report(maps, (alias_map, ensg_map, ensp_map), sources, edges, rejects, regulators,
                              (d_tfs, t_tfs), {"dorothea": d_tf_unmapped, "trrust": t_tf_unmapped})
    log.info("networks parsed and mapped in %.1f s", time.perf_counter() - t0)
    return edges, regulators, rejects, report


def _networks_report(maps: SymbolMaps, map_paths: tuple, sources: dict, edges: pd.DataFrame,
                     rejects: pd.DataFrame, regulators: list[str], tfs: tuple[set, set], tf_unmapped: dict) -> dict:
    """The ``report.json`` dict of :func:`build_networks`: id-map sizes, per-source reports, totals, regulators.

    ``map_paths`` are the (alias, ENSG, ENSP) map paths, ``tfs`` the (DoRothEA, TRRUST) TF symbol sets and
    ``tf_unmapped`` the unmapped TF names per source."""
    alias_map, ensg_map, ensp_map = map_paths
    d_tfs, t_tfs = tfs
    dropped_total = {r: int(sum(s["dropped"].get(r, 0) for s in sources.values())) for r in REASONS}
    return {
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
            "unmapped_tf_names": tf_unmapped,
        },
        "rejects_note": "one rejects.tsv.gz row per dropped input row, self-loops and duplicates included",
    }


def read_edges(path: str | Path) -> pd.DataFrame:
    """Load ``edges.parquet`` written by the networks stage and validate it.

    Parameters
    ----------
    path : str or pathlib.Path
        The ``edges.parquet`` file (columns :data:`EDGE_COLUMNS`; further columns are dropped).

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
# Full-release formats: STRING links with channel scores, STRING aliases and actions, Pathway
# Commons SIF, BioGRID TAB3, TFLink, HINT; yeast ids -> SGD systematic ORF names.
# --------------------------------------------------------------------------------------------------

#: Score columns of STRING ``protein.links[.detailed|.full]`` and ``protein.physical.links[.detailed]``.
STRING_SCORE_COLUMNS = (
    "neighborhood", "neighborhood_transferred", "fusion", "cooccurence", "homology", "coexpression",
    "coexpression_transferred", "experiments", "experiments_transferred", "experimental", "database",
    "database_transferred", "textmining", "textmining_transferred", "combined_score",
)
STRING_CHANNELS = ("neighborhood", "fusion", "cooccurence", "coexpression", "experimental", "database")


@dataclass(frozen=True)
class StringLinks:
    """Columns of a STRING links file, dictionary-encoded.

    Attributes
    ----------
    file : the file read.
    ids : str array [U] of distinct protein ids (for example ``4932.YGR222W``).
    a, b : int32 arrays [E] of indices into ``ids`` (``protein1``, ``protein2``).
    scores : dict column -> int16 array [E] of scores in 0..1000 (STRING scores x 1000).
    first_line : file line of row 0 (2: the header is line 1); row ``i`` is line ``first_line + i``.
    """

    file: Path
    ids: np.ndarray
    a: np.ndarray
    b: np.ndarray
    scores: dict
    first_line: int = 2


def _line_of_text(path: Path, text: str) -> int | None:
    """1-based number of the first line of ``path`` equal to ``text`` (error path only)."""
    opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
    target = text.rstrip("\r\n").encode()
    with opener(path, "rb") as fh:
        for i, line in enumerate(fh, start=1):
            if line.rstrip(b"\r\n") == target:
                return i
    return None


def read_string_links(path: str | Path, columns: Iterable[str] | None = None) -> StringLinks:
    """Read a STRING ``protein.links`` file (space-separated, header ``protein1 protein2 <scores>``).

    Columnar and multi-threaded (``pyarrow.csv``): ``protein1/protein2`` are read as dictionary arrays, the
    scores as int16; no Python loop over rows. Formats: ``protein.links.detailed`` (``neighborhood fusion
    cooccurence coexpression experimental database textmining combined_score``), ``protein.links``,
    ``protein.physical.links`` (``combined_score``) and their ``.full``/``.detailed`` variants
    (Szklarczyk et al., *Nucleic Acids Research* 51:D638, 2023; STRING download page).

    Parameters
    ----------
    path : the file (``.gz`` decompressed on the fly).
    columns : score columns to keep (default: all in the header).

    Returns
    -------
    StringLinks with E rows.

    Raises
    ------
    InputError
        Missing file; a header that is not ``protein1 protein2`` followed by known score columns; a line
        with another number of fields (message gives the line number and its text); a score that is not
        an integer in 0..1000 (line number); an empty file; a requested column that is absent.
    """
    what = "STRING links"
    path = require_file(path, what)
    header, score_cols = _string_links_header(path, what, columns)
    table = _read_string_links_table(path, what, header, score_cols)
    ids, a, b, scores = _string_links_arrays(table, path, what, score_cols)
    return StringLinks(path, np.asarray(ids.to_pylist(), dtype=object), a, b, scores)


def _string_links_header(path: Path, what: str, columns: Iterable[str] | None) -> tuple[list[str], list[str]]:
    """(header fields, score columns to keep) of a STRING links file (:func:`read_string_links`).

    Raises :class:`InputError` (line 1) on an unreadable file, a header that is not ``protein1 protein2``
    followed by known score columns, or a requested column that is absent."""
    try:
        opener = gzip.open if open(path, "rb").read(2) == b"\x1f\x8b" else open
        with opener(path, "rt", encoding="utf-8") as fh:
            header = fh.readline().rstrip("\r\n").split(" ")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise InputError(f"{what} {path}: cannot be read ({err})") from err
    unknown = [c for c in header[2:] if c not in STRING_SCORE_COLUMNS]
    if header[:2] != ["protein1", "protein2"] or len(header) < 3 or unknown or len(set(header)) != len(header):
        raise InputError(
            f"{what} {path}: line 1: header {header} is not 'protein1 protein2' followed by space-separated "
            f"STRING score columns (known: {list(STRING_SCORE_COLUMNS)})"
        )
    score_cols = list(header[2:]) if columns is None else list(columns)
    missing = [c for c in score_cols if c not in header]
    if missing:
        raise InputError(f"{what} {path}: line 1: header lacks score column(s) {missing}; found {header}")
    return header, score_cols


def _read_string_links_table(path: Path, what: str, header: list[str], score_cols: list[str]):
    """The STRING links file as a ``pyarrow.Table`` (``protein1/protein2`` dictionary arrays, int16 scores).

    Raises :class:`InputError` naming the line of the first malformed row or non-integer score, or on a
    file without data rows."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    invalid: list = []

    def _invalid(row):
        invalid.append(row)
        return "skip"

    dict_t = pa.dictionary(pa.int32(), pa.string())
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(use_threads=True, block_size=1 << 24),
            parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False, invalid_row_handler=_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={"protein1": dict_t, "protein2": dict_t, **{c: pa.int16() for c in header[2:]}},
                include_columns=["protein1", "protein2", *score_cols],
                strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as err:
        _raise_string_score_error(path, what, header, err)
    if invalid:
        row = invalid[0]
        line = row.number if row.number is not None else _line_of_text(path, row.text)
        raise InputError(
            f"{what} {path}: line {line}: expected {row.expected_columns} space-separated fields "
            f"({' '.join(header)}), found {row.actual_columns}: {row.text[:120]!r}"
            + (f" ({len(invalid)} malformed lines in total)" if len(invalid) > 1 else "")
        )
    if table.num_rows == 0:
        raise InputError(f"{what} {path}: no data rows")
    return table


def _raise_string_score_error(path: Path, what: str, header: list[str], err: Exception) -> NoReturn:
    """Raise :class:`InputError` for a STRING links parse failure ``err``: for a non-integer or out-of-int16
    score, naming its line (found on a string re-read; error path only)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.csv as pacsv

    # A non-integer or out-of-int16 score: find its line on a string re-read (error path only).
    if "conversion" not in str(err).lower():
        raise InputError(f"{what} {path}: cannot be parsed ({err})") from err
    raw = pacsv.read_csv(
        path,
        parse_options=pacsv.ParseOptions(delimiter=" ", quote_char=False),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in header}),
    )
    for c in header[2:]:
        ok = pc.match_substring_regex(raw[c], r"^[0-9]{1,4}$")
        bad = np.flatnonzero(~ok.to_numpy(zero_copy_only=False))
        if bad.size:
            raise InputError(
                f"{what} {path}: line {int(bad[0]) + 2}: field {c!r} is {raw[c][int(bad[0])].as_py()!r}; "
                "expected an integer score 0..1000"
            ) from err
    raise InputError(f"{what} {path}: cannot be parsed ({err})") from err


def _string_links_arrays(table, path: Path, what: str, score_cols: list[str]):
    """(ids, a, b, scores) of :class:`StringLinks` from the table of :func:`_read_string_links_table`:
    one id dictionary for both columns; raises :class:`InputError` on a score outside 0..1000."""
    import pyarrow as pa
    import pyarrow.compute as pc

    table = table.unify_dictionaries()
    p1 = table.column("protein1").combine_chunks()
    p2 = table.column("protein2").combine_chunks()
    # One id dictionary for both columns.
    ids = pa.concat_arrays([p1.dictionary, p2.dictionary]).unique()
    a = pc.index_in(p1.dictionary, value_set=ids).to_numpy(zero_copy_only=False).astype(np.int32)[
        p1.indices.to_numpy(zero_copy_only=False)
    ]
    b = pc.index_in(p2.dictionary, value_set=ids).to_numpy(zero_copy_only=False).astype(np.int32)[
        p2.indices.to_numpy(zero_copy_only=False)
    ]
    scores = {}
    for c in score_cols:
        s = table.column(c).combine_chunks().to_numpy(zero_copy_only=False)
        bad = np.flatnonzero((s < 0) | (s > 1000))
        if bad.size:
            raise InputError(f"{what} {path}: line {int(bad[0]) + 2}: field {c!r} is {int(s[bad[0]])}; expected 0..1000")
        scores[c] = s.astype(np.int16, copy=False)
    return ids, a, b, scores


@dataclass(frozen=True)
class YeastMaps:
    """S. cerevisiae names -> SGD systematic ORF names, from STRING ``protein.aliases`` and ``protein.info``.

    Attributes
    ----------
    taxon : ``"4932"``.
    string_orf : dict STRING id (``4932.YGR222W``) -> ORF (its ``Ensembl_gene`` alias).
    orfs : frozenset of the ORF names (the organism's gene universe in STRING).
    upper : dict upper-cased ORF -> ORF.
    alias : dict alias -> ORF for aliases (any alias source, and ``preferred_name``) of exactly one ORF.
    alias_ambiguous : dict alias -> sorted tuple of its (>1) ORFs.
    """

    taxon: str
    string_orf: dict
    orfs: frozenset
    upper: dict
    alias: dict
    alias_ambiguous: dict


def load_yeast_maps(aliases: str | Path, info: str | Path) -> YeastMaps:
    """Build :class:`YeastMaps` from STRING v12 ``4932.protein.aliases`` and ``4932.protein.info``.

    The ORF of a STRING protein is its ``Ensembl_gene`` alias (the SGD systematic name, for example
    ``YEL009C``); every other alias (SGD standard names such as ``GCN4``, UniProt accessions, Entrez gene
    ids, SGD ids ...) and STRING's ``preferred_name`` map to that ORF.

    Parameters
    ----------
    aliases : str or pathlib.Path
        ``4932.protein.aliases`` (tab-separated, columns ``#string_protein_id, alias, source``; gzip allowed).
    info : str or pathlib.Path
        ``4932.protein.info`` (columns ``#string_protein_id, preferred_name``).

    Returns
    -------
    YeastMaps
        ``taxon`` the comma-joined taxon prefixes of the STRING ids, and the maps described there.

    Raises
    ------
    InputError
        Missing or malformed files; a STRING protein of ``info`` without an ``Ensembl_gene`` alias.
    """
    al = read_table(aliases, "STRING protein.aliases", ["#string_protein_id", "alias", "source"],
                    rename={"string_protein_id": "#string_protein_id"})
    inf = read_table(info, "STRING protein.info", ["#string_protein_id", "preferred_name"],
                     rename={"string_protein_id": "#string_protein_id"})
    gene = al[al["source"] == "Ensembl_gene"].drop_duplicates("#string_protein_id")
    string_orf = dict(zip(gene["#string_protein_id"], gene["alias"]))
    lacking = sorted(set(inf["#string_protein_id"]) - set(string_orf))
    if lacking:
        raise InputError(
            f"STRING protein.aliases {aliases}: {len(lacking)} protein(s) of {info} have no 'Ensembl_gene' "
            f"alias (the SGD systematic ORF name), for example {lacking[:5]}"
        )
    taxa = {s.split(".", 1)[0] for s in string_orf}
    orfs = frozenset(string_orf.values())
    names = pd.concat([
        pd.DataFrame({"name": al["alias"], "sid": al["#string_protein_id"]}),
        pd.DataFrame({"name": inf["preferred_name"], "sid": inf["#string_protein_id"]}),
    ], ignore_index=True)
    names["symbol"] = names["sid"].map(string_orf)
    names = names.dropna(subset=["symbol"])
    alias_map, alias_amb = _unique_map(names.rename(columns={"name": "alias_symbol"}), "alias_symbol")
    up = pd.Series(sorted(orfs))
    key = up.str.upper()
    cnt = key.map(key.value_counts())
    return YeastMaps(",".join(sorted(taxa)), string_orf, orfs, dict(zip(key[cnt == 1], up[cnt == 1])),
                     alias_map, alias_amb)


def map_yeast(names: Iterable[str], maps: YeastMaps) -> tuple[np.ndarray, np.ndarray]:
    """Map yeast names or STRING ids to SGD systematic ORF names.

    Routes, in order: ``string_id`` (a STRING protein id), ``orf`` (already an ORF name), ``orf_case``
    (an ORF up to case), ``alias`` (an alias of exactly one ORF), else ``ambiguous`` (alias of several
    ORFs) or ``unmapped``.

    Parameters
    ----------
    names : iterable of str [N]
        Yeast gene names, aliases or STRING ids (``4932.YGR222W``).
    maps : YeastMaps
        From :func:`load_yeast_maps`.

    Returns
    -------
    (orfs, routes): object arrays [N]; ``orfs[i]`` is ``""`` when not mapped.
    """
    names = list(names)
    sym = np.empty(len(names), dtype=object)
    route = np.empty(len(names), dtype=object)
    for i, n in enumerate(names):
        if n in maps.string_orf:
            sym[i], route[i] = maps.string_orf[n], "string_id"
        elif n in maps.orfs:
            sym[i], route[i] = n, "orf"
        elif n.upper() in maps.upper:
            sym[i], route[i] = maps.upper[n.upper()], "orf_case"
        elif n in maps.alias:
            sym[i], route[i] = maps.alias[n], "alias"
        elif n in maps.alias_ambiguous:
            sym[i], route[i] = "", "ambiguous"
        else:
            sym[i], route[i] = "", "unmapped"
    return sym, route


def map_human(
    names: Iterable[str], maps: SymbolMaps, kind: str, entrez: tuple[dict, dict] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Map human ids of one ``kind`` to HGNC symbols.

    Parameters
    ----------
    names : iterable of str [N]
        The ids.
    maps : SymbolMaps
        From :func:`load_symbol_maps`.
    kind : str
        ``symbol`` (see :func:`map_symbols`), ``ensg`` / ``ensp`` (shipped maps, ``ensp`` also with a
        ``9606.`` prefix), ``entrez`` (the Entrez column of the ENSG and ENSP maps; an id of several symbols
        is ambiguous).
    entrez : tuple of (dict, dict), optional
        The (unique, ambiguous) maps of :func:`load_entrez_map`; required for ``kind="entrez"``.

    Returns
    -------
    (symbols, routes): object arrays [N]; ``symbols[i]`` is ``""`` when not mapped; ``routes[i]`` is a
    route of :func:`map_symbols` for ``symbol``, else ``ensg_map`` / ``ensp_map`` / ``entrez_map``,
    ``ambiguous`` or ``unmapped``.

    Raises
    ------
    ValueError
        An unknown ``kind``, or ``kind="entrez"`` without ``entrez``.
    """
    values = pd.Series(list(names), dtype=object)
    if kind == "symbol":
        return map_symbols(values, maps)
    if kind == "ensg":
        return _map_ids(values, maps.ensg, maps.ensg_ambiguous, "ensg_map")
    if kind == "ensp":
        return _map_ids(values.str.replace(r"^9606\.", "", regex=True), maps.ensp, maps.ensp_ambiguous, "ensp_map")
    if kind == "entrez":
        if entrez is None:
            raise ValueError("kind 'entrez' needs the map of load_entrez_map")
        ent, amb = entrez
        return _map_ids(values, ent, amb, "entrez_map")
    raise ValueError(f"unknown id kind {kind!r}")


def load_entrez_map(ensg: str | Path, ensp: str | Path) -> tuple[dict, dict]:
    """Entrez gene id -> HGNC symbol from the ``entrez`` columns of the ENSG and ENSP maps.

    Parameters
    ----------
    ensg : str or pathlib.Path
        ``hs_ensg_entrez_symbol.tsv`` (columns ``ensg, entrez, symbol``).
    ensp : str or pathlib.Path
        ``hs_ensp_entrez_symbol.tsv`` (columns ``ensp, entrez, symbol``).

    Returns
    -------
    (unique, ambiguous) dicts as in :class:`SymbolMaps`: Entrez id -> symbol for ids of exactly one symbol;
    Entrez id -> sorted tuple of its (>1) symbols. Empty and ``NA`` Entrez ids are skipped.

    Raises
    ------
    InputError
        A file is missing or malformed, or lacks its columns (:func:`read_table`).
    """
    eg = read_table(ensg, "ENSG map", ["ensg", "entrez", "symbol"])
    ep = read_table(ensp, "ENSP map", ["ensp", "entrez", "symbol"])
    both = pd.concat([eg[["entrez", "symbol"]], ep[["entrez", "symbol"]]], ignore_index=True)
    both = both[(both["entrez"] != "") & (both["entrez"] != "NA")]
    return _unique_map(both, "entrez")


def read_string_actions(path: str | Path) -> pd.DataFrame:
    """STRING ``protein.actions`` (v11): ``item_id_a item_id_b mode action is_directional a_is_acting score``.

    Parameters
    ----------
    path : str or pathlib.Path
        The tab-separated file with that header (gzip allowed).

    Returns
    -------
    pandas.DataFrame
        The rows (str columns, ``score`` int64, ``_line``).

    Raises
    ------
    InputError
        A malformed line, an ``is_directional``/``a_is_acting`` not in {t, f} or a score not in 0..1000
        (naming the line).
    """
    what = "STRING protein.actions"
    cols = ["item_id_a", "item_id_b", "mode", "action", "is_directional", "a_is_acting", "score"]
    rows = read_table(path, what, ["item_id_a", "item_id_b", "mode", "score"])
    for c in ("is_directional", "a_is_acting"):
        bad = np.flatnonzero(~rows[c].isin(["t", "f"]).to_numpy())
        if bad.size:
            raise InputError(f"{what} {path}: line {rows['_line'].iat[bad[0]]}: field {c!r} is "
                             f"{rows[c].iat[bad[0]]!r}; expected 't' or 'f'")
    rows["score"] = _int_column(rows, "score", path, what, 0, 1000)
    return rows[cols + ["_line"]]


def _int_column(rows: pd.DataFrame, col: str, path, what: str, lo: int, hi: int) -> np.ndarray:
    v = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v) | (v != np.round(v)) | (v < lo) | (v > hi))
    if bad.size:
        raise InputError(f"{what} {path}: line {rows['_line'].iat[bad[0]]}: field {col!r} is "
                         f"{rows[col].iat[bad[0]]!r}; expected an integer in {lo}..{hi}")
    return v.astype(np.int64)


def read_sif(path: str | Path) -> pd.DataFrame:
    """Pathway Commons SIF: three tab-separated fields ``source relation target``, no header (HGNC symbols
    or CHEBI ids).

    Parameters
    ----------
    path : str or pathlib.Path
        The SIF file (gzip allowed).

    Returns
    -------
    pandas.DataFrame
        str columns ``source, relation, target`` and ``_line``.

    Raises
    ------
    InputError
        A missing or malformed file (:func:`read_table`: names the line).
    """
    return read_table(path, "Pathway Commons SIF", ["source", "relation", "target"], header=False,
                      names=["source", "relation", "target"])


BIOGRID_COLUMNS = [
    "#BioGRID Interaction ID", "Entrez Gene Interactor A", "Entrez Gene Interactor B",
    "Systematic Name Interactor A", "Systematic Name Interactor B",
    "Official Symbol Interactor A", "Official Symbol Interactor B",
    "Experimental System", "Experimental System Type",
    "Organism ID Interactor A", "Organism ID Interactor B",
]


def read_biogrid(path: str | Path) -> pd.DataFrame:
    """BioGRID TAB3 (``BIOGRID-*.tab3.txt``, tab-separated, 37 columns, header ``#BioGRID Interaction ID``).

    ``Experimental System Type`` must be ``physical`` or ``genetic``.

    Parameters
    ----------
    path : str or pathlib.Path
        The TAB3 file (gzip allowed).

    Returns
    -------
    pandas.DataFrame
        The rows with at least :data:`BIOGRID_COLUMNS` (str) and ``_line``.

    Raises
    ------
    InputError
        A missing or malformed file, or another ``Experimental System Type``; names the file and line.
    """
    what = "BioGRID TAB3"
    rows = read_table(path, what, BIOGRID_COLUMNS)
    bad = np.flatnonzero(~rows["Experimental System Type"].isin(["physical", "genetic"]).to_numpy())
    if bad.size:
        raise InputError(f"{what} {path}: line {rows['_line'].iat[bad[0]]}: 'Experimental System Type' is "
                         f"{rows['Experimental System Type'].iat[bad[0]]!r}; expected 'physical' or 'genetic'")
    return rows


TFLINK_COLUMNS = ["UniprotID.TF", "UniprotID.Target", "NCBI.GeneID.TF", "NCBI.GeneID.Target", "Name.TF",
                  "Name.Target", "Detection.method", "PubmedID", "Organism", "Source.database",
                  "Small-scale.evidence"]


def read_tflink(path: str | Path) -> pd.DataFrame:
    """TFLink simple format (``TFLink_<Organism>_interactions_All_simpleFormat_v1.0.tsv``; Liska et al.,
    *Database* 2022): tab-separated with header :data:`TFLINK_COLUMNS` (plus optional ortholog columns).
    ``Small-scale.evidence`` must be ``Yes`` or ``No``.

    Parameters
    ----------
    path : str or pathlib.Path
        The TFLink file (gzip allowed).

    Returns
    -------
    pandas.DataFrame
        str columns and ``_line``.

    Raises
    ------
    InputError
        A missing or malformed file, or ``Small-scale.evidence`` not ``Yes``/``No``; names the file and line.
    """
    what = "TFLink"
    rows = read_table(path, what, ["UniprotID.TF", "UniprotID.Target", "NCBI.GeneID.TF", "NCBI.GeneID.Target",
                                   "Name.TF", "Name.Target", "Small-scale.evidence"])
    bad = np.flatnonzero(~rows["Small-scale.evidence"].isin(["Yes", "No"]).to_numpy())
    if bad.size:
        raise InputError(f"{what} {path}: line {rows['_line'].iat[bad[0]]}: 'Small-scale.evidence' is "
                         f"{rows['Small-scale.evidence'].iat[bad[0]]!r}; expected 'Yes' or 'No'")
    return rows


HINT_COLUMNS = ["Uniprot_A", "Uniprot_B", "Gene_A", "Gene_B", "ORF_A", "ORF_B", "Alias_A", "Alias_B",
                "pmid:method:quality"]


def read_hint(path: str | Path) -> pd.DataFrame:
    """HINT high-quality interactome (``<Organism>_binary_hq.txt`` or ``_cocomp_hq.txt``; Das & Yu, *BMC
    Syst Biol* 2012): tab-separated with header :data:`HINT_COLUMNS`; ``Gene_*`` may be empty (then the
    UniProt accession is used).

    Parameters
    ----------
    path : str or pathlib.Path
        The HINT file (gzip allowed).

    Returns
    -------
    pandas.DataFrame
        str columns and ``_line``.

    Raises
    ------
    InputError
        A missing or malformed file, or an empty ``Uniprot_A``/``Uniprot_B``/``pmid:method:quality`` field
        (:func:`read_table`: names the line).
    """
    return read_table(path, "HINT", ["Uniprot_A", "Uniprot_B", "pmid:method:quality"])


COLLECTRI_COLUMNS = ["source", "target", "source_genesymbol", "target_genesymbol", "is_directed", "is_stimulation",
                     "is_inhibition", "consensus_direction", "consensus_stimulation", "consensus_inhibition"]


def read_collectri(path: str | Path) -> pd.DataFrame:
    """CollecTRI regulons as served by OmniPath (``/interactions?datasets=collectri&genesymbols=yes&format=tsv``;
    Mueller-Dott et al., *NAR* 2023): tab-separated with header :data:`COLLECTRI_COLUMNS` (further columns
    allowed). ``source``/``target`` are UniProt accessions, or ``COMPLEX:<acc>_<acc>`` for the AP-1 and NF-kB
    complexes whose ``*_genesymbol`` joins the member symbols with ``_``. The ``consensus_*`` and ``is_*``
    fields must be 0 or 1.

    Parameters
    ----------
    path : str or pathlib.Path
        The OmniPath TSV (gzip allowed).

    Returns
    -------
    pandas.DataFrame
        str columns and ``_line``.

    Raises
    ------
    InputError
        A missing or malformed file, or a ``consensus_*``/``is_*`` value not 0 or 1 (surrounding whitespace
        allowed); names the file, line and field of the first bad value.
    """
    what = "CollecTRI"
    flags = ["is_directed", "is_stimulation", "is_inhibition", "consensus_direction", "consensus_stimulation",
             "consensus_inhibition"]
    rows = read_table(path, what, ["source", "target", "source_genesymbol", "target_genesymbol", *flags])
    for f in flags:
        bad = np.flatnonzero(~rows[f].str.strip().isin(["0", "1"]).to_numpy())
        if bad.size:
            raise InputError(f"{what} {path}: line {rows['_line'].iat[bad[0]]}: field {f!r} is "
                             f"{rows[f].iat[bad[0]]!r}; expected 0 or 1")
    return rows
