"""The gene multigraph: one node index, nine graph types, from the public network releases.

Graph types (:data:`GRAPH_TYPES`) and where their edges come from:

- ``physical`` (undirected): STRING ``protein.physical.links`` (combined score), BioGRID TAB3 rows of
  ``Experimental System Type`` physical, HuRI, HINT binary and co-complex, Pathway Commons SIF relations
  ``in-complex-with`` and ``interacts-with``.
- ``regulatory`` (directed TF -> target): DoRothEA (confidence letters), CollecTRI (OmniPath TSV; a
  complex regulator such as ``JUN_FOS`` gives one edge per member, weight +1 stimulation, -1 inhibition,
  0 unsigned), TRRUST, Pathway Commons
  ``controls-expression-of``, STRING v11 ``protein.actions`` rows of mode ``expression`` with
  ``a_is_acting = t``.
- ``tflink`` (directed): TFLink simple format.
- ``neighborhood, fusion, cooccurence, coexpression, experimental, database`` (undirected): the channel
  scores of STRING ``protein.links.detailed`` (Szklarczyk et al., *NAR* 2023); an edge is kept in a
  channel graph when the row's ``combined_score`` and that channel's score pass their thresholds (and the
  channel score is > 0). Weights are STRING scores / 1000.

Nodes are HGNC symbols (human: ENSP, ENSG, Entrez and symbol aliases through the shipped org.Hs.eg.db maps,
see :mod:`cellgraph.graphs.networks`) or SGD systematic ORF names (yeast: STRING ids and names through STRING
``protein.aliases``). The node index is the organism's gene universe (human: symbols of the ENSP map;
yeast: ORFs of STRING ``protein.info``) plus every mapped edge end, sorted; or, with ``--genes``, exactly
the genes of that list (an expression dataset's genes), edges outside it being counted.

Per input row, in order: ``not_selected`` (a relation, mode, organism or system type that no graph
uses), ``below_threshold``, ``unmapped`` / ``ambiguous`` (first failing end), ``self_loop``, ``mirror``
(an undirected pair listed again in the reverse order, as STRING lists every pair), ``duplicate``
(listed again in the same order; first row wins). Every reason is counted in ``report.json``;
``unmapped, ambiguous, self_loop, duplicate`` rows are also written to ``rejects.tsv.gz``
(``not_selected``, ``below_threshold`` and ``mirror`` rows only counted: they are tens of millions for the
full STRING release). Edges of one graph type from several sources are merged (weight = maximum).

Outputs in ``--out-dir``: ``multigraph.npz`` (keys ``organism``, ``nodes`` str [N], ``graph_types`` str
[9], ``directed`` bool [9], and per graph type ``g``: ``edge_index_<g>`` int64 [2, E_g] (undirected edges
once, ``src < dst``), ``edge_weight_<g>`` float32 [E_g]); ``summary.tsv``; ``degrees.png``;
``rejects.tsv.gz``; ``report.json``. :func:`load_multigraph` reads it as a dict of ``edge_index`` or a
PyG ``HeteroData``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import networks as nw
from ..errors import InputError
from ..io import atomic_path, require_file, save_figure

log = logging.getLogger(__name__)

__all__ = ["GRAPH_TYPES", "ORGANISMS", "DEFAULT_THRESHOLDS", "build_multigraph", "load_multigraph",
           "to_hetero_data", "summarize", "save_multigraph", "plot_degree_distributions"]

GRAPH_TYPES = ("physical", "regulatory", "tflink") + nw.STRING_CHANNELS
DIRECTED = {"physical": False, "regulatory": True, "tflink": True, **{c: False for c in nw.STRING_CHANNELS}}
ORGANISMS = ("human", "yeast")
TAXON = {"human": "9606", "yeast": "4932"}
REASONS = ("not_selected", "below_threshold", "unmapped", "ambiguous", "self_loop", "mirror", "duplicate")
WRITTEN = ("unmapped", "ambiguous", "self_loop", "duplicate")
REJECT_COLUMNS = ["source", "graph", "file", "line", "field", "value", "reason"]
#: Minimum scores per source and score column (STRING scores are 0..1000).
DEFAULT_THRESHOLDS = {
    "string_links.combined_score": 400,
    **{f"string_links.{c}": 150 for c in nw.STRING_CHANNELS},
    "string_physical.combined_score": 400,
    "string_actions.score": 400,
}
HUMAN_ONLY = ("dorothea", "collectri", "trrust", "huri", "pathway_commons")
SOURCES = ("string_links", "string_physical", "string_actions", "dorothea", "collectri", "trrust", "huri",
           "pathway_commons", "biogrid", "tflink", "hint_binary", "hint_cocomp")


@dataclass
class Part:
    """One source's rows for one graph type, before id mapping.

    ids : object [U] distinct raw ids; a, b : int [E] indices into ids; weight : float [E];
    line : int64 [E] file lines; pre : int8 [E] 0 or a REASONS code (``not_selected``/``below_threshold``);
    fields : names of the two id columns (for rejects).
    """

    source: str
    graph: str
    file: str
    ids: np.ndarray
    a: np.ndarray
    b: np.ndarray
    weight: np.ndarray
    line: np.ndarray
    pre: np.ndarray
    fields: tuple
    kind: str
    threshold: str = "none"
    extra: dict = field(default_factory=dict)


def _codes(*columns: pd.Series) -> tuple[np.ndarray, list[np.ndarray]]:
    """Factorize several id columns over one shared id array."""
    allv = pd.concat(columns, ignore_index=True)
    codes, uniq = pd.factorize(allv, sort=False)
    out, start = [], 0
    for c in columns:
        out.append(codes[start:start + len(c)].astype(np.int32))
        start += len(c)
    return np.asarray(uniq, dtype=object), out


def _part_from_rows(source, graph, file, rows, fa, fb, weight, pre, kind, threshold="none", ids_a=None, ids_b=None):
    ca = rows[fa] if ids_a is None else ids_a
    cb = rows[fb] if ids_b is None else ids_b
    ids, (a, b) = _codes(ca.str.strip(), cb.str.strip())
    return Part(source, graph, str(file), ids, a, b, np.asarray(weight, dtype=np.float32),
                rows["_line"].to_numpy(np.int64), np.asarray(pre, dtype=np.int8), (fa, fb), kind, threshold)


def _thr(thresholds: dict, key: str) -> int:
    return int(thresholds.get(key, DEFAULT_THRESHOLDS.get(key, 0)))


# --------------------------------------------------------------------------------------------------
# Sources -> parts
# --------------------------------------------------------------------------------------------------


def _string_links_parts(path, thresholds, kind) -> list[Part]:
    links = nw.read_string_links(path)
    cols = links.scores
    missing = [c for c in nw.STRING_CHANNELS if c not in cols]
    if missing or "combined_score" not in cols:
        raise InputError(
            f"STRING links {path}: the channel graphs need protein.links.detailed columns "
            f"{['combined_score', *nw.STRING_CHANNELS]}; missing {missing or ['combined_score']}"
        )
    t_comb = _thr(thresholds, "string_links.combined_score")
    base = cols["combined_score"] < t_comb
    n = len(links.a)
    line = np.arange(links.first_line, links.first_line + n, dtype=np.int64)
    parts = []
    for ch in nw.STRING_CHANNELS:
        t = _thr(thresholds, f"string_links.{ch}")
        s = cols[ch]
        pre = np.where(base | (s < t) | (s == 0), 2, 0).astype(np.int8)
        parts.append(Part("string_links", ch, str(path), links.ids, links.a, links.b, s.astype(np.float32) / 1000.0,
                          line, pre, ("protein1", "protein2"), kind,
                          f"combined_score >= {t_comb} and {ch} >= {max(t, 1)}"))
    return parts


def _string_physical_part(path, thresholds, kind) -> Part:
    links = nw.read_string_links(path, ["combined_score"])
    t = _thr(thresholds, "string_physical.combined_score")
    s = links.scores["combined_score"]
    n = len(s)
    return Part("string_physical", "physical", str(path), links.ids, links.a, links.b, s.astype(np.float32) / 1000.0,
                np.arange(2, n + 2, dtype=np.int64), np.where(s < t, 2, 0).astype(np.int8), ("protein1", "protein2"), kind,
                f"combined_score >= {t}")


def _string_actions_part(path, thresholds, modes, kind) -> Part:
    rows = nw.read_string_actions(path)
    t = _thr(thresholds, "string_actions.score")
    selected = rows["mode"].isin(list(modes)).to_numpy() & (rows["a_is_acting"] == "t").to_numpy()
    # codes: 0 keep, 1 not_selected, 2 below_threshold
    code = np.where(~selected, 1, np.where(rows["score"].to_numpy() < t, 2, 0)).astype(np.int8)
    return _part_from_rows("string_actions", "regulatory", path, rows, "item_id_a", "item_id_b",
                           rows["score"].to_numpy() / 1000.0, code, kind,
                           f"mode in {sorted(modes)}, a_is_acting = t, score >= {t}")


def _sif_parts(path, relations: dict) -> list[Part]:
    rows = nw.read_sif(path)
    parts = []
    used = np.zeros(len(rows), dtype=bool)
    for graph in ("physical", "regulatory"):
        rel = list(relations.get(graph, []))
        mask = rows["relation"].isin(rel).to_numpy()
        used |= mask
        sub = rows[mask]
        parts.append(_part_from_rows("pathway_commons", graph, path, sub, "source", "target",
                                     np.ones(len(sub)), np.zeros(len(sub)), "symbol", f"relation in {rel}"))
    # rows that no graph uses: one extra part of not_selected rows (counted only)
    rest = rows[~used]
    parts.append(_part_from_rows("pathway_commons", "(none)", path, rest, "source", "target", np.ones(len(rest)),
                                 np.ones(len(rest)), "symbol", "relation not used by any graph"))
    return parts


def _biogrid_part(path, organism, kind) -> Part:
    rows = nw.read_biogrid(path)
    tax = TAXON[organism]
    ok = ((rows["Organism ID Interactor A"] == tax) & (rows["Organism ID Interactor B"] == tax)
          & (rows["Experimental System Type"] == "physical")).to_numpy()
    if organism == "human":
        fa, fb = "Entrez Gene Interactor A", "Entrez Gene Interactor B"
    else:
        fa, fb = "Systematic Name Interactor A", "Systematic Name Interactor B"
    part = _part_from_rows("biogrid", "physical", path, rows, fa, fb, np.ones(len(rows)), np.where(ok, 0, 1), kind,
                           f"physical, both interactors taxon {tax}")
    part.extra["rows_by_system_type"] = {k: int(v) for k, v in rows["Experimental System Type"].value_counts().items()}
    return part


def _tflink_part(path, kind) -> Part:
    rows = nw.read_tflink(path)
    return _part_from_rows("tflink", "tflink", path, rows, "Name.TF", "Name.Target", np.ones(len(rows)),
                           np.zeros(len(rows)), kind)


def _collectri_part(path, kind) -> Part:
    rows = nw.read_collectri(path)
    n = len(rows)
    # A complex regulator (COMPLEX:...; symbols joined by "_") regulates the target through each member.
    members = rows["source_genesymbol"].str.strip().str.split("_")
    counts = members.str.len().to_numpy()
    is_complex = rows["source"].str.startswith("COMPLEX:").to_numpy()
    if (counts[~is_complex] > 1).any():  # a plain protein whose symbol holds "_": keep the symbol whole
        members = members.where(is_complex, rows["source_genesymbol"].str.strip().map(lambda x: [x]))
        counts = members.str.len().to_numpy()
    rows = rows.loc[rows.index.repeat(counts)].reset_index(drop=True)
    regulator = pd.Series(np.concatenate(members.to_numpy()) if n else np.array([], dtype=object), dtype=object)
    sign = (rows["consensus_stimulation"].astype(int) - rows["consensus_inhibition"].astype(int)).to_numpy()
    part = _part_from_rows("collectri", "regulatory", path, rows, "source_genesymbol", "target_genesymbol",
                           sign.astype(np.float32), np.zeros(len(rows)), kind, ids_a=regulator)
    part.extra["rows_in_file"] = int(n)
    part.extra["complex_rows"] = int(is_complex.sum())
    part.extra["edges_from_complex_members"] = int(counts[is_complex].sum())
    part.extra["note"] = "rows_read counts complex rows once per member (one edge per member)"
    return part


def _hint_part(source, path, organism, kind) -> Part:
    rows = nw.read_hint(path)
    col = "Gene" if organism == "human" else "ORF"
    ida = rows[f"{col}_A"].where(rows[f"{col}_A"].str.strip() != "", rows["Uniprot_A"])
    idb = rows[f"{col}_B"].where(rows[f"{col}_B"].str.strip() != "", rows["Uniprot_B"])
    return _part_from_rows(source, "physical", path, rows, f"{col}_A", f"{col}_B", np.ones(len(rows)),
                           np.zeros(len(rows)), kind, ids_a=ida, ids_b=idb)


# --------------------------------------------------------------------------------------------------
# Mapping and filtering (vectorised over rows)
# --------------------------------------------------------------------------------------------------


def _assemble(part: Part, mapper) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """Map ids, apply the drop reasons; return (edges [source, target, weight], rejects, report)."""
    sym_u, route_u = mapper(part.ids, part.kind)
    sym_u = np.asarray(sym_u, dtype=object)
    n = len(part.a)
    r = part.pre.astype(np.int8).copy()  # 0 keep, 1 not_selected, 2 below_threshold, 3.. see REASONS
    code = {name: i + 1 for i, name in enumerate(REASONS)}
    rfield = np.zeros(n, dtype=np.int8)  # 1 = first id field, 2 = second, 3 = both
    ok_u = sym_u != ""
    amb_u = route_u == "ambiguous"
    for k, ends in enumerate((part.a, part.b), start=1):
        bad = (r == 0) & ~ok_u[ends]
        r[bad] = np.where(amb_u[ends[bad]], code["ambiguous"], code["unmapped"])
        rfield[bad] = k
    symbols = np.asarray(sorted(set(sym_u[ok_u])), dtype=object)
    code_u = np.full(len(sym_u), -1, dtype=np.int64)
    if symbols.size:
        code_u[ok_u] = pd.Index(symbols).get_indexer(sym_u[ok_u])
    ca, cb = code_u[part.a], code_u[part.b]
    loop = (r == 0) & (ca == cb)
    r[loop] = code["self_loop"]
    directed = DIRECTED.get(part.graph, True)
    lo, hi = (ca, cb) if directed else (np.minimum(ca, cb), np.maximum(ca, cb))
    alive = np.flatnonzero(r == 0)
    key = lo[alive] * (len(symbols) + 1) + hi[alive]
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    is_dup = np.ones(alive.size, dtype=bool)
    is_dup[first] = False
    first_row = alive[first][inv]
    dup_rows = alive[is_dup]
    if directed:
        mirror = np.zeros(dup_rows.size, dtype=bool)
    else:
        mirror = (ca[dup_rows] < cb[dup_rows]) != (ca[first_row[is_dup]] < cb[first_row[is_dup]])
    r[dup_rows[mirror]] = code["mirror"]
    r[dup_rows[~mirror]] = code["duplicate"]
    rfield[np.isin(r, [code["self_loop"], code["duplicate"]])] = 3
    keep = r == 0
    edges = pd.DataFrame({"source": symbols[lo[keep]] if symbols.size else np.array([], dtype=object),
                          "target": symbols[hi[keep]] if symbols.size else np.array([], dtype=object),
                          "weight": part.weight[keep].astype(np.float64)})
    counts = np.bincount(r, minlength=len(REASONS) + 1)
    dropped = {name: int(counts[code[name]]) for name in REASONS}
    assert int(keep.sum()) + sum(dropped.values()) == n
    wr = np.flatnonzero(np.isin(r, [code[x] for x in WRITTEN]))
    fa, fb = part.fields
    fname = np.array(["", fa, fb, f"{fa},{fb}"], dtype=object)[rfield[wr]]
    ida, idb = part.ids[part.a[wr]], part.ids[part.b[wr]]
    pair_vals = np.array([f"{x}|{y}" for x, y in zip(sym_u[part.a[wr]], sym_u[part.b[wr]])], dtype=object) \
        if wr.size else np.array([], dtype=object)
    value = np.where(rfield[wr] == 1, ida, np.where(rfield[wr] == 2, idb, pair_vals))
    reason_names = np.array(["keep", *REASONS], dtype=object)
    rejects = pd.DataFrame({"source": part.source, "graph": part.graph, "file": part.file,
                            "line": part.line[wr], "field": fname, "value": value, "reason": reason_names[r[wr]]})
    # Distinct-id mapping statistics over the ids of rows that reached the mapping step.
    reached = (part.pre == 0)
    used = np.unique(np.concatenate([part.a[reached], part.b[reached]])) if reached.any() else np.array([], int)
    ids_rep = nw.id_stats(pd.Series(part.ids[used], dtype=object), sym_u[used], np.asarray(route_u, dtype=object)[used])
    ids_rep["kind"] = part.kind
    rep = {"file": part.file, "graph": part.graph, "threshold": part.threshold, "rows_read": int(n),
           "edges_kept": int(keep.sum()), "dropped": dropped, "rejects_written": int(wr.size), "ids": ids_rep,
           **part.extra}
    return edges, rejects, rep


def _mapper(organism: str, human_maps=None, entrez=None, string_info=None, yeast_maps=None):
    cache: dict = {}

    def mapper(ids: np.ndarray, kind: str):
        """Map raw ids of one ``kind`` to node names (cached per ids array object).

        Parameters
        ----------
        ids : object array [U]
            Distinct raw ids of a :class:`Part`.
        kind : str
            ``yeast`` (any id, :func:`cellgraph.graphs.networks.map_yeast`), or for human ``string``
            (:func:`cellgraph.graphs.networks.map_string_ids`), ``symbol``, ``ensg``, ``ensp``, ``entrez``
            (:func:`cellgraph.graphs.networks.map_human`).

        Returns
        -------
        (symbols, routes) : object arrays [U]
            Node name (HGNC symbol or SGD ORF) or ``""`` when not mapped; the mapping route.

        Raises
        ------
        ValueError
            An unknown human id kind.
        """
        key = (kind, id(ids))
        if key in cache and cache[key][0] is ids:  # same array object (the STRING channels share one)
            return cache[key][1]
        if organism == "yeast":
            out = nw.map_yeast(ids, yeast_maps)
        elif kind == "string":
            out = nw.map_string_ids(pd.Series(ids, dtype=object), string_info, human_maps)
        else:
            out = nw.map_human(ids, human_maps, kind, entrez)
        cache[key] = (ids, (np.asarray(out[0], dtype=object), np.asarray(out[1], dtype=object)))
        return cache[key][1]

    return mapper


# --------------------------------------------------------------------------------------------------
# The whole build
# --------------------------------------------------------------------------------------------------


def build_multigraph(organism: str, inputs: dict, thresholds: dict | None = None, *,
                     dorothea_confidence=("A", "B", "C"), string_actions_modes=("expression",),
                     pc_relations: dict | None = None, genes: list[str] | None = None) -> tuple[dict, pd.DataFrame, dict]:
    """Parse, map, threshold and merge the sources of one organism (nothing is written).

    Parameters
    ----------
    organism : ``human`` or ``yeast``.
    inputs : dict source key -> path, keys among :data:`SOURCES` and ``string_info``, ``string_aliases``
        (yeast: required), ``alias_map``, ``ensg_map``, ``ensp_map`` (human: required).
    thresholds : ``"source.column" -> minimum score`` (defaults :data:`DEFAULT_THRESHOLDS`).
    dorothea_confidence : DoRothEA confidence letters kept (human; default A, B, C).
    string_actions_modes : STRING ``protein.actions`` modes kept as regulatory edges (default ``expression``).
    pc_relations : dict with keys ``physical`` and ``regulatory``: Pathway Commons SIF relations of each graph
        type (default :data:`cellgraph.graphs.networks.PC_PHYSICAL` and ``PC_REGULATORY``).
    genes : optional node list (an expression dataset's genes); default: the organism's universe.

    Returns
    -------
    graphs : dict with ``nodes`` (str [N]) and per graph type ``(edge_index int64 [2, E], weight float32 [E])``.
    rejects : DataFrame [R, 7] (:data:`REJECT_COLUMNS`).
    report : dict (content of ``report.json``).

    Raises
    ------
    InputError
        Unknown organism or source, a source of the other organism, missing id maps, any malformed input
        (file and line), a source whose graph is empty after its thresholds (names source and threshold).
    """
    t0 = time.perf_counter()
    thresholds, inputs, sources, pc_relations = _check_request(organism, inputs, thresholds, pc_relations)
    if organism == "yeast":
        mapper, universe, id_maps, kinds, hmaps = _yeast_setup(inputs, sources)
    else:
        mapper, universe, id_maps, kinds, hmaps = _human_setup(inputs)

    per_graph, rejects_all, src_reports = _collect_sources(
        organism, inputs, sources, thresholds, mapper, kinds, hmaps, dorothea_confidence, string_actions_modes,
        pc_relations)
    nodes, node_source = _node_index(per_graph, universe, genes)
    graphs, graph_reports = _merge_graphs(per_graph, nodes)
    rejects = pd.concat(rejects_all, ignore_index=True)[REJECT_COLUMNS] if rejects_all else pd.DataFrame(columns=REJECT_COLUMNS)
    summary = summarize(graphs)
    report = {
        "stage": "multigraph", "organism": organism, "id_maps": id_maps,
        "nodes": {"count": int(len(nodes)), "from": node_source},
        "thresholds": thresholds, "sources": src_reports, "graphs": graph_reports,
        "summary": summary.to_dict(orient="records"),
        "rejects_rows": int(len(rejects)),
        "rejects_note": ("unmapped, ambiguous, self_loop and duplicate rows are written to rejects.tsv.gz; "
                         "not_selected, below_threshold and mirror rows are counted here only"),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    return graphs, rejects, report


def _check_request(organism: str, inputs: dict, thresholds: dict | None, pc_relations: dict | None):
    """Validate the request of :func:`build_multigraph`; return (thresholds with defaults, inputs without
    empty values, sources in :data:`SOURCES` order, Pathway Commons relations with defaults).

    Raises :class:`InputError` on unknown threshold keys, organism or sources, no source, a missing file."""
    thresholds = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    unknown_thr = sorted(set(thresholds) - set(DEFAULT_THRESHOLDS))
    if unknown_thr:
        raise InputError(f"thresholds: unknown key(s) {unknown_thr}; expected among {sorted(DEFAULT_THRESHOLDS)}")
    if organism not in ORGANISMS:
        raise InputError(f"--organism {organism!r}: expected one of {list(ORGANISMS)}")
    aux = ("string_info", "string_aliases", "alias_map", "ensg_map", "ensp_map")
    inputs = {k: v for k, v in inputs.items() if v}
    unknown = sorted(set(inputs) - set(SOURCES) - set(aux))
    if unknown:
        raise InputError(f"unknown source(s) {unknown}; expected among {list(SOURCES)}")
    sources = [s for s in SOURCES if s in inputs]
    if not sources:
        raise InputError(f"no network source given for {organism}")
    for k, p in inputs.items():
        require_file(p, k)
    pc_relations = pc_relations or {"physical": list(nw.PC_PHYSICAL), "regulatory": list(nw.PC_REGULATORY)}
    return thresholds, inputs, sources, pc_relations


def _yeast_setup(inputs: dict, sources: list[str]):
    """(mapper, gene universe, ``id_maps`` report, id kind per source, None) for yeast: ids -> SGD ORFs
    through STRING ``protein.aliases`` / ``protein.info``. Raises :class:`InputError` on a human-only
    source, a missing STRING alias/info file or a STRING taxon other than 4932."""
    wrong = [s for s in sources if s in HUMAN_ONLY]
    if wrong:
        raise InputError(f"source(s) {wrong} are human-only; not usable for yeast")
    for k in ("string_info", "string_aliases"):
        if k not in inputs:
            raise InputError(f"yeast needs --{k.replace('_', '-')} (STRING 4932 protein.info / protein.aliases) to map ids")
    ymaps = nw.load_yeast_maps(inputs["string_aliases"], inputs["string_info"])
    if ymaps.taxon != TAXON["yeast"]:
        raise InputError(f"STRING protein.aliases {inputs['string_aliases']}: taxon {ymaps.taxon}; expected 4932 (yeast)")
    mapper = _mapper("yeast", yeast_maps=ymaps)
    universe = set(ymaps.orfs)
    id_maps = {"string_aliases": str(inputs["string_aliases"]), "string_info": str(inputs["string_info"]),
               "orfs": len(ymaps.orfs), "aliases_unique": len(ymaps.alias),
               "aliases_ambiguous": len(ymaps.alias_ambiguous)}
    kinds = dict.fromkeys(SOURCES, "yeast")
    return mapper, universe, id_maps, kinds, None


def _human_setup(inputs: dict):
    """(mapper, gene universe, ``id_maps`` report, id kind per source, symbol maps) for human: ids -> HGNC
    symbols through the shipped id maps. Raises :class:`InputError` on a missing id map, STRING links
    without ``string_info``, or ``string_actions`` (yeast only)."""
    for k in ("alias_map", "ensg_map", "ensp_map"):
        if k not in inputs:
            raise InputError(f"human needs --{k.replace('_', '-')} (HGNC id map)")
    if ("string_links" in inputs or "string_physical" in inputs) and "string_info" not in inputs:
        raise InputError("human STRING links need --string-info (9606 protein.info) for the preferred_name fallback")
    if "string_actions" in inputs:
        raise InputError("string_actions is used for yeast only (STRING v11 actions)")
    hmaps = nw.load_symbol_maps(inputs["alias_map"], inputs["ensg_map"], inputs["ensp_map"])
    entrez = nw.load_entrez_map(inputs["ensg_map"], inputs["ensp_map"])
    info = None
    if "string_info" in inputs:
        info = nw.read_table(inputs["string_info"], "STRING protein.info", ["#string_protein_id", "preferred_name"],
                             rename={"string_protein_id": "#string_protein_id"})
    mapper = _mapper("human", human_maps=hmaps, entrez=entrez, string_info=info)
    universe = set(hmaps.ensp.values())
    id_maps = {"alias": str(inputs["alias_map"]), "ensg": str(inputs["ensg_map"]), "ensp": str(inputs["ensp_map"]),
               "approved_symbols": len(hmaps.approved), "entrez_unique": len(entrez[0])}
    kinds = {"string_links": "string", "string_physical": "string", "biogrid": "entrez", "tflink": "symbol",
             "collectri": "symbol",
             "hint_binary": "symbol", "hint_cocomp": "symbol"}
    return mapper, universe, id_maps, kinds, hmaps


def _collect_sources(organism, inputs, sources, thresholds, mapper, kinds, hmaps, dorothea_confidence,
                     string_actions_modes, pc_relations):
    """Parse and map every source; return (graph type -> [(source, edges [source, target, weight])], the
    rejects frames, source -> report). Raises :class:`InputError` when a source leaves a graph empty."""
    per_graph: dict[str, list[tuple[str, pd.DataFrame]]] = {g: [] for g in GRAPH_TYPES}
    rejects_all, src_reports = [], {}
    for s in sources:
        path = inputs[s]
        if s in ("dorothea", "trrust", "huri"):  # the networks stage's parsers, reused as they are
            graph, e, rj, rp = _networks_stage_source(s, path, hmaps, dorothea_confidence)
            per_graph[graph].append((s, e[["source", "target", "weight"]]))
            rejects_all.append(rj[REJECT_COLUMNS])
            src_reports[s] = rp
            if len(e) == 0:
                raise InputError(f"source {s} ({path}): no {graph} edges left after {rp['threshold']}")
            continue
        parts = _source_parts(s, path, organism, thresholds, kinds, string_actions_modes, pc_relations)
        reps = {}
        for part in parts:
            e, rj, rp = _assemble(part, mapper)
            reps[part.graph] = rp
            rejects_all.append(rj)
            if part.graph == "(none)":
                continue
            if len(e) == 0:
                raise InputError(f"source {s} ({path}): no {part.graph} edges left after threshold {part.threshold}")
            per_graph[part.graph].append((s, e))
        src_reports[s] = reps if len(reps) > 1 else next(iter(reps.values()))
    return per_graph, rejects_all, src_reports


def _networks_stage_source(s: str, path, hmaps, dorothea_confidence):
    """DoRothEA, TRRUST or HuRI through the networks stage's readers: (graph type, edges, rejects with
    :data:`REJECT_COLUMNS`, report)."""
    if s == "dorothea":
        e, rj, rp, _ = nw.read_dorothea(path, hmaps, sorted(dorothea_confidence))
    elif s == "trrust":
        e, rj, rp, _ = nw.read_trrust(path, hmaps)
    else:
        e, rj, rp = nw.read_huri(path, hmaps)
    graph = "physical" if s == "huri" else "regulatory"
    rj = rj.rename(columns={"graph": "source"}).assign(graph=graph)
    rp = {**rp, "graph": graph, "threshold": f"confidence in {sorted(dorothea_confidence)}" if s == "dorothea" else "none"}
    return graph, e, rj, rp


def _source_parts(s: str, path, organism, thresholds, kinds, string_actions_modes, pc_relations) -> list[Part]:
    """The :class:`Part` list of one source that is not read by the networks stage."""
    if s == "string_links":
        parts = _string_links_parts(path, thresholds, kinds[s])
    elif s == "string_physical":
        parts = [_string_physical_part(path, thresholds, kinds[s])]
    elif s == "string_actions":
        parts = [_string_actions_part(path, thresholds, string_actions_modes, kinds[s])]
    elif s == "pathway_commons":
        parts = _sif_parts(path, pc_relations)
    elif s == "biogrid":
        parts = [_biogrid_part(path, organism, kinds[s])]
    elif s == "tflink":
        parts = [_tflink_part(path, kinds[s])]
    elif s == "collectri":
        parts = [_collectri_part(path, kinds[s])]
    else:
        parts = [_hint_part(s, path, organism, kinds[s])]
    return parts


def _node_index(per_graph: dict, universe: set, genes: list[str] | None) -> tuple[np.ndarray, str]:
    """(nodes object [N], where they come from): ``genes`` in order without repeats, else the sorted union
    of the organism's universe and every edge end."""
    endpoints = set()
    for g in GRAPH_TYPES:
        for _, e in per_graph[g]:
            endpoints.update(e["source"])
            endpoints.update(e["target"])
    if genes is not None:
        nodes = np.asarray(list(dict.fromkeys(genes)), dtype=object)
        node_source = "--genes"
    else:
        nodes = np.asarray(sorted(universe | endpoints), dtype=object)
        node_source = "organism universe + edge ends"
    return nodes, node_source


def _merge_graphs(per_graph: dict, nodes: np.ndarray) -> tuple[dict, dict]:
    """Index every graph type's edges by ``nodes`` (edges outside dropped, undirected ones as ``u < v``)
    and merge sources (weight = maximum); return (graphs as in :func:`build_multigraph`, per-graph report)."""
    index = pd.Index(nodes)
    graphs: dict = {"nodes": nodes}
    graph_reports = {}
    for g in GRAPH_TYPES:
        srcs = per_graph[g]
        if not srcs:
            graphs[g] = (np.zeros((2, 0), np.int64), np.zeros(0, np.float32))
            graph_reports[g] = {"sources": [], "edges": 0, "note": "no source for this graph type in this run"}
            continue
        e = pd.concat([x for _, x in srcs], ignore_index=True)
        from_src = {name: int(len(x)) for name, x in srcs}
        u, v = index.get_indexer(e["source"]), index.get_indexer(e["target"])
        inside = (u >= 0) & (v >= 0)
        u, v, w = u[inside], v[inside], e["weight"].to_numpy(np.float64)[inside]
        if not DIRECTED[g]:
            u, v = np.minimum(u, v), np.maximum(u, v)
        df = pd.DataFrame({"u": u, "v": v, "w": w}).groupby(["u", "v"], sort=True)["w"].max().reset_index()
        graphs[g] = (np.vstack([df["u"].to_numpy(np.int64), df["v"].to_numpy(np.int64)]),
                     df["w"].to_numpy(np.float32))
        graph_reports[g] = {"sources": [name for name, _ in srcs], "edges_from_source": from_src,
                            "outside_node_index": int((~inside).sum()),
                            "merged_across_sources": int(inside.sum() - len(df)), "edges": int(len(df))}
    return graphs, graph_reports


def summarize(graphs: dict) -> pd.DataFrame:
    """Per graph type: nodes (index size), nodes with an edge, edges, directed, density, degree quantiles.

    Density is E / (N (N - 1) / 2) for undirected and E / (N (N - 1)) for directed graphs; degrees are total
    degrees (in + out) over the nodes with at least one edge.

    Parameters
    ----------
    graphs : dict
        As returned by :func:`build_multigraph`: ``nodes`` (str [N]) and per graph type of :data:`GRAPH_TYPES`
        ``(edge_index int64 [2, E_g], weight float32 [E_g])``.

    Returns
    -------
    pandas.DataFrame
        One row per graph type, columns ``graph, directed, nodes, nodes_with_edges, edges, density`` (fraction
        0-1), ``degree_median, degree_q90, degree_q99`` (float) and ``degree_max`` (int).
    """
    n = len(graphs["nodes"])
    rows = []
    for g in GRAPH_TYPES:
        ei, _ = graphs[g]
        e = ei.shape[1]
        deg = np.bincount(ei.ravel(), minlength=n) if e else np.zeros(n, np.int64)
        act = deg[deg > 0]
        pairs = n * (n - 1) / (1 if DIRECTED[g] else 2)
        q = np.quantile(act, [0.5, 0.9, 0.99]) if act.size else [0, 0, 0]
        rows.append({"graph": g, "directed": DIRECTED[g], "nodes": n, "nodes_with_edges": int(act.size),
                     "edges": int(e), "density": float(e / pairs) if pairs else 0.0,
                     "degree_median": float(q[0]), "degree_q90": float(q[1]), "degree_q99": float(q[2]),
                     "degree_max": int(act.max()) if act.size else 0})
    return pd.DataFrame(rows)


def plot_degree_distributions(graphs: dict, path: str | Path, title: str) -> None:
    """Log-log plot of each graph type's degree distribution (complementary CDF), saved as PNG and PDF.

    Parameters
    ----------
    graphs : dict
        As returned by :func:`build_multigraph`: ``nodes`` (str [N]) and per graph type of
        :data:`GRAPH_TYPES` ``(edge_index int [2, E_g], weight [E_g])``.
    path : str or Path
        The PNG file (``degrees.png``); :func:`cellgraph.io.save_figure` writes a PDF beside it.
    title : str
        Axes title.

    Notes
    -----
    One step line per graph type with at least one edge: the fraction of nodes with total degree (in + out)
    at least x, over the nodes with an edge. Graph types without edges are left out of the plot.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(graphs["nodes"])
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for g in GRAPH_TYPES:
        ei, _ = graphs[g]
        if ei.shape[1] == 0:
            continue
        deg = np.bincount(ei.ravel(), minlength=n)
        deg = np.sort(deg[deg > 0])
        ccdf = 1.0 - np.arange(deg.size) / deg.size
        ax.loglog(deg, ccdf, drawstyle="steps-post", label=f"{g} ({ei.shape[1]:,} edges)")
    ax.set_xlabel("degree (in + out)")
    ax.set_ylabel("fraction of nodes with degree >= x")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)


def save_multigraph(path: str | Path, organism: str, graphs: dict) -> None:
    """Write ``multigraph.npz`` (see the module docstring for its keys), atomically.

    Parameters
    ----------
    path : str or Path
        The ``.npz`` file.
    organism : str
        ``human`` or ``yeast`` (stored as the key ``organism``).
    graphs : dict
        As returned by :func:`build_multigraph`: ``nodes`` (str [N]) and per graph type of :data:`GRAPH_TYPES`
        ``(edge_index int64 [2, E_g], weight float32 [E_g])``.
    """
    arrays = {"organism": np.array(organism), "nodes": graphs["nodes"].astype(str),
              "graph_types": np.array(GRAPH_TYPES), "directed": np.array([DIRECTED[g] for g in GRAPH_TYPES])}
    for g in GRAPH_TYPES:
        arrays[f"edge_index_{g}"], arrays[f"edge_weight_{g}"] = graphs[g]
    with atomic_path(path) as tmp:
        np.savez_compressed(tmp, **arrays)


def load_multigraph(path: str | Path, as_hetero: bool = False):
    """Load ``multigraph.npz``.

    Parameters
    ----------
    path : str or pathlib.Path
        The file written by :func:`save_multigraph`.
    as_hetero : bool
        Return a PyG ``HeteroData`` (:func:`to_hetero_data`, needs ``torch_geometric``) instead of the dict.

    Returns
    -------
    ``as_hetero=False``: dict with ``organism`` (str), ``nodes`` (list of str, length N), ``directed``
    (dict graph -> bool), ``edge_index`` (dict graph -> torch.LongTensor [2, E_g], undirected edges once)
    and ``edge_weight`` (dict graph -> torch.FloatTensor [E_g]).
    ``as_hetero=True``: :func:`to_hetero_data` of that dict.

    Raises
    ------
    InputError
        Missing file, missing keys, an edge index out of range.
    """
    import torch

    path = require_file(path, "multigraph")
    try:
        z = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any read failure is the user's file
        raise InputError(f"multigraph {path}: cannot be read as npz ({err})") from err
    with z:
        need = ["organism", "nodes", "graph_types", "directed"]
        missing = [k for k in need if k not in z.files]
        if missing:
            raise InputError(f"multigraph {path}: missing key(s) {missing}")
        nodes = [str(x) for x in z["nodes"]]
        out = {"organism": str(z["organism"]), "nodes": nodes, "directed": {}, "edge_index": {}, "edge_weight": {}}
        for g, d in zip(z["graph_types"], z["directed"]):
            g = str(g)
            absent = [k for k in (f"edge_index_{g}", f"edge_weight_{g}") if k not in z.files]
            if absent:
                raise InputError(f"multigraph {path}: graph {g!r} is listed but its key(s) {absent} are missing")
            ei, w = z[f"edge_index_{g}"], z[f"edge_weight_{g}"]
            if ei.size and (ei.min() < 0 or ei.max() >= len(nodes)):
                raise InputError(f"multigraph {path}: edge_index_{g} refers to nodes outside 0..{len(nodes) - 1}")
            out["directed"][g] = bool(d)
            out["edge_index"][g] = torch.from_numpy(ei.astype(np.int64))
            out["edge_weight"][g] = torch.from_numpy(w.astype(np.float32))
    return to_hetero_data(out) if as_hetero else out


def to_hetero_data(mg: dict, both_directions: bool = True):
    """PyG ``HeteroData`` with node type ``gene`` (``num_nodes``, ``name``) and one edge type
    ``("gene", <graph type>, "gene")`` per graph type (``edge_index`` [2, E], ``edge_weight`` [E]); undirected
    graphs get both directions when ``both_directions`` (``torch_geometric.utils.to_undirected``).

    Parameters
    ----------
    mg : dict
        As returned by :func:`load_multigraph` (``as_hetero=False``): ``nodes``, ``directed``, ``edge_index``
        (graph -> LongTensor [2, E_g]), ``edge_weight`` (graph -> FloatTensor [E_g]).
    both_directions : bool
        Add the reverse of every undirected edge (a pair given both ways keeps the larger weight).

    Returns
    -------
    torch_geometric.data.HeteroData
        Node type ``gene`` with ``num_nodes`` N and ``name`` (list of str [N]); edge types as above.
    """
    from torch_geometric.data import HeteroData
    from torch_geometric.utils import to_undirected

    data = HeteroData()
    data["gene"].num_nodes = len(mg["nodes"])
    data["gene"].name = list(mg["nodes"])
    for g, ei in mg["edge_index"].items():
        w = mg["edge_weight"][g]
        if both_directions and not mg["directed"][g] and ei.numel():
            ei, w = to_undirected(ei, w, num_nodes=len(mg["nodes"]), reduce="max")
        data["gene", g, "gene"].edge_index = ei
        data["gene", g, "gene"].edge_weight = w
    return data
