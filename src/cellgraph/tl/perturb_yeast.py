r"""Yeast double-mutant fitness and epsilon (``cellgraph perturb --task yeast``).

Data: the Costanzo et al. 2016 pair fragment (:func:`cellgraph.tl.perturb.load_costanzo`; DMF and epsilon =
DMF - SMF_q SMF_a) and the full single-mutant fitness table (Data File S1, ``--smf``; :func:`load_smf`).
Universe: the pair genes and their ``--yeast-hops``-hop multigraph neighbours. Samples: one single deletion
per universe gene with a fitness (the sparse multi-task case: singles carry fitness only) and every training
pair (fitness = DMF, interaction = epsilon).

Two fold schemes, ``--n-folds`` each:

- ``pairs``: K-fold over pairs (a test pair's genes appear in training pairs);
- ``genes``: the query genes are split into K groups; the test pairs of a fold are those of its held-out
  queries, and no training pair contains a held-out query gene (their singles stay: single-mutant fitness is
  measured for every gene).

Methods on the held-out pairs: both cell graph transformers (fitness and interaction readouts; the
interaction readout is a correction added to the additive baseline below, fitted on the fold's training pairs;
rows ``<model>_multiplicative`` add the model's epsilon to SMF_q SMF_a); baselines ``mean`` (training mean),
``multiplicative`` (DMF = SMF_q SMF_a, epsilon = 0) and ``additive``: epsilon = b + u_query + v_array, ridge
on one-hot query and array genes (``sklearn.linear_model.Ridge``, alpha ``--ridge``; an unseen gene's
coefficient is 0), DMF = SMF_q SMF_a + that epsilon. ``metrics.tsv`` has one row per (scheme, fold, target,
method); ``summary.tsv`` pools the held-out pairs of all folds of a scheme: Pearson with a 95% bootstrap CI over
pairs, and ``comparisons.tsv`` the paired bootstrap CI of each model's Pearson minus the additive baseline's.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import perturb as pt
from . import perturb_eval as pe
from ..errors import InputError
from ..io import require_file, write_json, write_tsv

log = logging.getLogger(__name__)

SMF_COLUMNS = ("Systematic gene name", "Single mutant fitness (26°)", "Single mutant fitness (30°)")
MODELS = ("equivariant_cgt", "non_equivariant_cgt")


def _default_graph_reg() -> dict:
    return {"physical": [0, 0, 0.1], "regulatory": [1, 1, 0.1]}


@dataclasses.dataclass(frozen=True)
class YeastParams:
    """Options of the yeast double-mutant task (:func:`run_yeast`; ``cellgraph perturb --task yeast``).

    Attributes
    ----------
    preset : cell graph transformer preset, :data:`cellgraph.models.cell_graph_transformer.PRESETS`
        (``--preset``, default ``"demo"``).
    head : set readout, ``mean`` | ``cross_attention`` | ``hypersagnn`` (``--head``, default ``cross_attention``).
    graph_reg : {graph: [layer, head, lambda]} graph-regularised attention heads
        (:func:`cellgraph.tl.perturb.graph_reg_from_flags` of ``--graph-reg``; default physical on layer 0 head 0
        and regulatory on layer 1 head 1, lambda 0.1 each).
    n_folds : folds of each scheme, pairs and gene-disjoint (``--n-folds``, default 5).
    max_epochs : training epochs of each model per fold (``--yeast-max-epochs``, default 40).
    batch_size : samples per batch (``--batch-size``, default 1024).
    lr : AdamW learning rate (``--lr``, default 3e-3).
    hops : neighbourhood of the phenotype genes in the multigraph, -1 = all nodes (``--yeast-hops``, default 1).
    ridge : alpha of the additive ridge baseline (``--ridge``, default 0.1).
    diagnostics_every : attention diagnostics after every this-many-th epoch and the last one
        (``--diagnostics-every``, default 10).
    seed : seeds the folds, the bootstrap and, as seed + fold, initialisation and batch order
        (``--seed``, default 0).
    """

    preset: str = "demo"
    head: str = "cross_attention"
    graph_reg: dict = dataclasses.field(default_factory=_default_graph_reg)
    n_folds: int = 5
    max_epochs: int = 40
    batch_size: int = 1024
    lr: float = 3e-3
    hops: int = 1
    ridge: float = 0.1
    diagnostics_every: int = 10
    seed: int = 0


def load_smf(path) -> tuple[pd.Series, dict]:
    """Costanzo 2016 Data File S1 -> (fitness per ORF, report).

    A strain's fitness is its 30° value, or its 26° value where the 30° one is missing; an ORF's fitness is
    the mean over its strains (deletion, DAmP and temperature-sensitive alleles). Strains with neither value
    are dropped and counted.

    Parameters
    ----------
    path : str or os.PathLike
        Data File S1 as TSV (``--smf``) with the columns of :data:`SMF_COLUMNS`.

    Returns
    -------
    tuple
        (``pd.Series`` float: mean single-mutant fitness per ORF, indexed by the upper-cased systematic name;
        report dict ``strains_read``, ``strains_without_fitness``, ``orfs``).

    Raises
    ------
    InputError
        If the file is missing, a column of :data:`SMF_COLUMNS` is missing or a fitness is not numeric.
    """
    path = require_file(path, "--smf")
    df = pd.read_csv(path, sep="\t")
    missing = [c for c in SMF_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"--smf {path}: missing column(s) {missing}; expected Costanzo 2016 Data File S1 as TSV")
    try:
        fit = pd.to_numeric(df[SMF_COLUMNS[2]]).fillna(pd.to_numeric(df[SMF_COLUMNS[1]]))
    except ValueError as err:
        raise InputError(f"--smf {path}: single-mutant fitness must be numeric ({err})") from None
    ok = fit.notna()
    smf = fit[ok].groupby(df.loc[ok, SMF_COLUMNS[0]].str.upper()).mean()
    rep = {"strains_read": int(len(df)), "strains_without_fitness": int((~ok).sum()), "orfs": int(len(smf))}
    return smf, rep


def gene_disjoint_folds(pairs: pd.DataFrame, n_folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds over the query genes -> [(train pair rows, test pair rows)]: the test pairs are those of the
    held-out queries (each pair is tested once); a training pair contains no held-out query gene, neither as
    query nor as array.

    Parameters
    ----------
    pairs : pd.DataFrame
        One row per pair with columns ``query`` and ``array`` (ORFs; :func:`cellgraph.tl.perturb.load_costanzo`).
    n_folds : int
        Number of folds K.
    seed : int
        Seed of ``numpy.random.default_rng`` for the permutation of the query genes.

    Returns
    -------
    list of tuple of np.ndarray
        One (training row positions int, test row positions int) per fold, positions into ``pairs``.

    Raises
    ------
    InputError
        If there are fewer distinct query genes than ``n_folds``.
    """
    queries = np.array(sorted(set(pairs["query"])))
    if len(queries) < n_folds:
        raise InputError(f"{len(queries)} query genes cannot be split into {n_folds} gene-disjoint folds")
    groups = np.array_split(np.random.default_rng(seed).permutation(queries), n_folds)
    out = []
    for held in groups:
        test = pairs["query"].isin(held).to_numpy()
        touch = test | pairs["array"].isin(held).to_numpy()
        out.append((np.flatnonzero(~touch), np.flatnonzero(test)))
    return out


def additive_epsilon(train: pd.DataFrame, test: pd.DataFrame, alpha: float) -> np.ndarray:
    """Ridge on one-hot query and array genes fitted to training epsilons -> predicted test epsilons.

    epsilon = b + u_query + v_array (``sklearn.linear_model.Ridge``); a gene unseen in ``train`` contributes 0.

    Parameters
    ----------
    train : pd.DataFrame
        Training pairs with columns ``query``, ``array`` and ``epsilon`` (DMF - SMF_q SMF_a).
    test : pd.DataFrame
        Pairs to predict, with columns ``query`` and ``array``.
    alpha : float
        Ridge penalty (``--ridge``).

    Returns
    -------
    np.ndarray
        float [len(test)], predicted epsilon of each test pair (fitness units).
    """
    from sklearn.linear_model import Ridge

    def onehot(df, cols):
        """One-hot design [len(df), len(cols)] of each pair's query (``q:<gene>``) and array (``a:<gene>``)
        genes over the columns ``cols``; a gene without a column (unseen in training) gets no 1.
        """
        x = np.zeros((len(df), len(cols)))
        pos = {c: i for i, c in enumerate(cols)}
        for j, (q, a) in enumerate(zip(df["query"], df["array"])):
            for key in (f"q:{q}", f"a:{a}"):
                if key in pos:
                    x[j, pos[key]] = 1.0
        return x

    cols = sorted({f"q:{q}" for q in train["query"]} | {f"a:{a}" for a in train["array"]})
    model = Ridge(alpha=alpha).fit(onehot(train, cols), train["epsilon"].to_numpy())
    return model.predict(onehot(test, cols))


def _bootstrap_pearson(pred: dict, obs: np.ndarray, n_boot: int, seed: int) -> dict:
    """Pearson of each method over the pooled pairs and its percentile-bootstrap CI (pairs resampled, the same
    resamples for every method) -> {method: (r, lo, hi, boot draws)}."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(obs), (n_boot, len(obs)))
    out = {}
    for m, p in pred.items():
        boots = np.array([pe.pearson(p[i], obs[i]) for i in idx])
        out[m] = (pe.pearson(p, obs), *np.nanpercentile(boots, [2.5, 97.5]), boots)
    return out


def run_fold(params: YeastParams, ctx: dict, scheme: str, k: int, tr: np.ndarray, te: np.ndarray,
             diag_rows: dict) -> tuple:
    """Train both models on the singles and the training pairs; -> (metric rows, {method: predictions}).

    Parameters
    ----------
    params : run options; ctx : :func:`load_context` dict.
    scheme : ``"pairs"`` or ``"genes"`` (attention diagnostics are recorded for ``pairs`` folds only).
    k : fold number (initialisation and batch order seeded by ``params.seed + k``).
    tr, te : training and test rows of ``ctx["pairs"]``.
    diag_rows : ``{"graph_rows": [...], "head_rows": [...]}``, extended in place.

    Returns
    -------
    (rows, methods)
        metric rows per (method, target) and {method: {"dmf": float [len(te)], "epsilon": float [len(te)]}}.
    """
    pairs, single_sets, smf_y = ctx["pairs"], ctx["single_sets"], ctx["single_y"]
    n_s = len(single_sets)
    fit_y = np.concatenate([smf_y, pairs["dmf"].to_numpy()[tr]]).astype(np.float32)
    eps_y = np.concatenate([np.full(n_s, np.nan), pairs["epsilon"].to_numpy()[tr]]).astype(np.float32)
    eps_m = np.concatenate([np.zeros(n_s, bool), np.ones(len(tr), bool)])
    train, test = pairs.iloc[tr], pairs.iloc[te]
    mult = (test["smf_q"] * test["smf_a"]).to_numpy()
    add = additive_epsilon(train, test, params.ridge)
    # the interaction readout corrects the additive baseline (fitted on the training pairs only)
    eps_offset = np.concatenate([np.zeros(n_s), additive_epsilon(train, train, params.ridge)])
    samples = pt.Samples(single_sets + [ctx["pair_sets"][i] for i in tr],
                         {"fitness": (fit_y, np.ones(n_s + len(tr), bool)), "interaction": (eps_y, eps_m)},
                         offsets={"interaction": eps_offset})
    methods = {"mean": {"dmf": np.full(len(te), train["dmf"].mean()), "epsilon": np.full(len(te), train["epsilon"].mean())},
               "multiplicative": {"dmf": mult, "epsilon": np.zeros(len(te))},
               "additive": {"dmf": mult + add, "epsilon": add}}
    for kind in ("equivariant", "non_equivariant"):
        torch.manual_seed(params.seed + k)  # the initialisation does not depend on what ran before in the process
        model, _ = pt.make_model(kind, len(ctx["genes"]), ctx["graphs"], "yeast", ctx["report"], preset=params.preset,
                                 head=params.head, graph_reg=params.graph_reg)
        diag = ({"graphs": ctx["graphs"], **diag_rows, "every": params.diagnostics_every, "model": f"{kind}_cgt",
                 "fold": k} if scheme == "pairs" else None)
        pt.fit(model, samples, {"fitness": 1.0, "interaction": 1.0}, max_epochs=params.max_epochs,
               batch_size=params.batch_size, lr=params.lr, seed=params.seed + k, diagnostics=diag)
        p = pt.predict(model, [ctx["pair_sets"][i] for i in te], offsets={"interaction": add})
        methods[f"{kind}_cgt"] = {"dmf": p["fitness"], "epsilon": p["interaction"]}
        methods[f"{kind}_cgt_multiplicative"] = {"dmf": mult + p["interaction"], "epsilon": p["interaction"]}
    obs = {"dmf": test["dmf"].to_numpy(), "epsilon": test["epsilon"].to_numpy()}
    rows = [{"scheme": scheme, "fold": k, "method": m, "target": t, "n_pairs": len(te),
             "pearson": pe.pearson(pr[t], obs[t]), "mse": float(np.mean((pr[t] - obs[t]) ** 2))}
            for m, pr in methods.items() for t in ("dmf", "epsilon")]
    return rows, methods


def load_context(hops: int, *, pairs_path, smf_path, string_info_path, multigraph_path) -> dict:
    """Everything the folds share.

    Parameters
    ----------
    hops : neighbourhood of the pair genes in the multigraph, -1 = all nodes (``--yeast-hops``).
    pairs_path : Costanzo 2016 pairs csv (``--pairs``; :func:`cellgraph.tl.perturb.load_costanzo`).
    smf_path : Costanzo 2016 Data File S1 as TSV (``--smf``; :func:`load_smf`).
    string_info_path : STRING ``protein.info`` of yeast (``--string-info``).
    multigraph_path : ``multigraph.npz`` of yeast (``--multigraph``).

    Returns
    -------
    dict
        ``pairs`` (DataFrame), ``genes`` (universe: pair genes and their ``hops``-hop neighbours), ``graphs``
        (the multigraph restricted to it), ``report``, ``single_sets`` / ``single_y`` (one set and fitness per
        gene with a single-mutant fitness: the table's, else the pairs' SMF values) and ``pair_sets``.

    Raises
    ------
    InputError
        If an input file is missing or malformed.
    """
    from ..graphs.multigraph import load_multigraph

    pairs, report = pt.load_costanzo(pairs_path, string_info_path)
    smf_table, smf_rep = load_smf(smf_path)
    mg = load_multigraph(multigraph_path)
    seeds = sorted(set(pairs["query"]) | set(pairs["array"]))
    genes = pt.yeast_universe(mg, seeds, hops)
    pos = {g: i for i, g in enumerate(genes)}
    graphs, kept = pt.restrict_graphs(mg, genes)
    from_pairs = pd.concat([pairs[["query", "smf_q"]].set_axis(["g", "smf"], axis=1),
                            pairs[["array", "smf_a"]].set_axis(["g", "smf"], axis=1)]).groupby("g")["smf"].mean()
    smf = {g: float(smf_table[g.upper()]) for g in genes if g.upper() in smf_table.index}
    for g, v in from_pairs.items():
        smf.setdefault(g, float(v))
    report.update(smf=smf_rep, universe=len(genes), phenotype_genes=len(seeds), hops=hops,
                  graph_edges=kept, singles=len(smf), singles_from_table=int(sum(g.upper() in smf_table.index for g in genes)),
                  seed_genes_not_in_multigraph=sorted(set(seeds) - set(mg["nodes"])))
    singles = sorted(smf)
    return {"pairs": pairs, "genes": genes, "graphs": graphs, "report": report,
            "single_sets": [np.array([pos[g]]) for g in singles], "single_y": np.array([smf[g] for g in singles]),
            "pair_sets": [np.array([pos[q], pos[a]]) for q, a in zip(pairs["query"], pairs["array"])]}


def run_yeast(params: YeastParams, *, pairs_path, smf_path, string_info_path, multigraph_path,
              out_dir: Path) -> None:
    """``cellgraph perturb --task yeast``: double-mutant fitness and epsilon on two fold schemes (module docstring).

    Reads ``pairs_path``, ``smf_path``, ``string_info_path`` and ``multigraph_path`` (:func:`load_context`),
    runs ``params.n_folds`` pair folds and gene-disjoint folds (:func:`run_fold`), and writes to ``out_dir``:
    ``metrics.tsv`` (per scheme, fold, target, method), ``summary.tsv`` (Pearson over the pooled held-out pairs
    with 95% bootstrap CI, MSE), ``comparisons.tsv`` (each model minus the additive baseline, paired bootstrap
    CI), ``attention_diagnostics.tsv``, ``attention_heads.tsv`` and ``report.json``.

    Parameters
    ----------
    params : YeastParams
        Run options.
    pairs_path, smf_path, string_info_path, multigraph_path : str or os.PathLike
        Inputs of :func:`load_context` (``--pairs``, ``--smf``, ``--string-info``, ``--multigraph``).
    out_dir : pathlib.Path
        Existing output folder.

    Raises
    ------
    InputError
        If an input file is missing or malformed, or there are fewer query genes than ``params.n_folds``.
    """
    from sklearn.model_selection import KFold

    t0 = time.time()
    ctx = load_context(params.hops, pairs_path=pairs_path, smf_path=smf_path, string_info_path=string_info_path,
                       multigraph_path=multigraph_path)
    pairs = ctx["pairs"]
    schemes = {"pairs": list(KFold(n_splits=params.n_folds, shuffle=True, random_state=params.seed).split(pairs)),
               "genes": gene_disjoint_folds(pairs, params.n_folds, params.seed)}
    rows, summary, comps = [], [], []
    diag_rows: dict = {"graph_rows": [], "head_rows": []}
    for scheme, folds in schemes.items():
        pooled: dict = {}
        order = []
        for k, (tr, te) in enumerate(folds):
            r, methods = run_fold(params, ctx, scheme, k, tr, te, diag_rows)
            rows += r
            order.append(te)
            for m, pr in methods.items():
                for t in ("dmf", "epsilon"):
                    pooled.setdefault((m, t), []).append(pr[t])
            log.info("yeast %s fold %d done", scheme, k)
        te_all = np.concatenate(order)
        for t in ("dmf", "epsilon"):
            obs = pairs[t].to_numpy()[te_all]
            preds = {m: np.concatenate(v) for (m, tt), v in pooled.items() if tt == t}
            boot = _bootstrap_pearson(preds, obs, 2000, params.seed)
            for m, (r, lo, hi, _) in boot.items():
                summary.append({"scheme": scheme, "target": t, "method": m, "n_pairs": len(obs), "pearson": r,
                                "ci_low": lo, "ci_high": hi, "mse": float(np.mean((preds[m] - obs) ** 2))})
            for m in MODELS:
                d = boot[m][3] - boot["additive"][3]
                comps.append({"scheme": scheme, "target": t, "model": m, "baseline": "additive",
                              "difference": boot[m][0] - boot["additive"][0],
                              "ci_low": float(np.nanpercentile(d, 2.5)), "ci_high": float(np.nanpercentile(d, 97.5))})
    ctx["report"].update(seconds=round(time.time() - t0, 1))
    write_tsv(pd.DataFrame(rows), out_dir / "metrics.tsv")
    write_tsv(pd.DataFrame(summary), out_dir / "summary.tsv", "%.4g")
    write_tsv(pd.DataFrame(comps), out_dir / "comparisons.tsv", "%.4g")
    pt.write_diagnostics(out_dir, diag_rows)
    write_json(out_dir / "report.json", ctx["report"])
    log.info("yeast:\n%s\n%s", pd.DataFrame(summary).to_string(index=False), pd.DataFrame(comps).to_string(index=False))
