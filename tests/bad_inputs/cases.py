"""Broken inputs derived from the real vendored files, one :class:`Case` each (issue 17).

A case names the stage it breaks, a builder that writes the broken input(s) into a folder, extra flags,
and the substrings the single error message must hold: the file (or field), the line or field name, and
what was expected. The builders start from small real subsets written by the fixtures of
``tests/test_bad_inputs.py``:

- ``networks``: the first lines of every file of ``resources/demo/networks`` (gzip kept where the
  original is gzipped), keys ``dorothea, trrust, huri, string, string_info, alias, ensg, ensp``;
- ``aracne``: an ARACNe-AP matrix (``matrix.tsv``: 60 genes x 40 NK cells of the real PBMC counts), a
  regulator list (``regulators.txt``) and the subset h5ad (``h5ad``);
- ``expression``: 40 cells per type of the real PBMC counts (``h5ad``);
- ``config``: ``config/config.yaml`` as a dict, changed by the builder and written as YAML.

A builder returns ``{key: path}`` of the inputs it replaced (networks, aracne, expression) or the changed
config dict (config).
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

METACHAR_DIR = "net work $HOME;touch PWNED"


@dataclass(frozen=True)
class Case:
    """One broken input: ``id``, the ``stage`` it is given to, the ``build`` function, extra CLI ``flags``
    and the ``expect`` substrings of the error message."""

    id: str
    stage: str
    build: Callable
    expect: list[str]
    flags: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Helpers on text files (gzipped or not)
# --------------------------------------------------------------------------------------------------


def read_lines(path: Path) -> list[bytes]:
    """Lines of ``path`` (gunzipped if its name ends in .gz), without line ends."""
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        data = gzip.decompress(data)
    return data.rstrip(b"\n").split(b"\n")


def write_lines(path: Path, lines: list[bytes], gz: bool | None = None) -> Path:
    """Write ``lines`` (with a final newline) to ``path``, gzipped when its name ends in .gz."""
    data = b"\n".join(lines) + b"\n"
    gz = path.name.endswith(".gz") if gz is None else gz
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def edited(src: Path, dst: Path, edit: Callable[[list[bytes]], list[bytes]]) -> Path:
    """``dst`` holding the lines of ``src`` after ``edit``."""
    return write_lines(dst, edit(read_lines(src)))


def set_field(lines: list[bytes], line_no: int, index: int, value: bytes, sep: bytes = b"\t") -> list[bytes]:
    """Replace field ``index`` of the 1-based line ``line_no``."""
    lines = list(lines)
    fields = lines[line_no - 1].split(sep)
    fields[index] = value
    lines[line_no - 1] = sep.join(fields)
    return lines


def swap_fields(lines: list[bytes], a: int, b: int) -> list[bytes]:
    """Swap the fields ``a`` and ``b`` of every data line (the header stays)."""
    out = [lines[0]]
    for line in lines[1:]:
        f = line.split(b"\t")
        f[a], f[b] = f[b], f[a]
        out.append(b"\t".join(f))
    return out


def truncated(src: Path, dst: Path, fraction: float = 0.5) -> Path:
    """The first ``fraction`` of the bytes of ``src``."""
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


def corrupt_gzip(src: Path, dst: Path) -> Path:
    """``src`` with 64 bytes of its deflate stream flipped (the header and trailer intact)."""
    data = bytearray(src.read_bytes())
    mid = len(data) // 2
    for i in range(mid, mid + 64):
        data[i] ^= 0x5A
    dst.write_bytes(bytes(data))
    return dst


def bad_crc(src: Path, dst: Path) -> Path:
    """``src`` with its gzip CRC-32 trailer changed (the data intact)."""
    data = bytearray(src.read_bytes())
    data[-6] ^= 0xFF
    dst.write_bytes(bytes(data))
    return dst


def cut_mid_last_line(src: Path, dst: Path) -> tuple[Path, int]:
    """``src`` cut 2 bytes into its last line (a download that stopped mid-row, inside the first field);
    returns the path and the number of that line."""
    lines = read_lines(src)
    lines[-1] = lines[-1][:2]
    data = b"\n".join(lines)  # no final newline: the file ends mid-row
    dst.write_bytes(gzip.compress(data, mtime=0) if dst.name.endswith(".gz") else data)
    return dst, len(lines)


# --------------------------------------------------------------------------------------------------
# networks: `cellgraph networks` on the real subsets
# --------------------------------------------------------------------------------------------------


def _net(key: str, name: str, edit: Callable[[list[bytes]], list[bytes]]):
    return lambda src, d: {key: edited(src[key], d / name, edit)}


def _net_bytes(key: str, name: str, fn: Callable[[Path, Path], Path]):
    return lambda src, d: {key: fn(src[key], d / name)}


def _huri_cut(src, d):
    return {"huri": cut_mid_last_line(src["huri"], d / "huri_cut.tsv")[0]}


def _metachar_dorothea(src, d):
    return {"dorothea": edited(src["dorothea"], d / METACHAR_DIR / "dorothea bad;$X.tsv.gz",
                               lambda L: set_field(L, 9, 3, b"up"))}


NETWORK_CASES = [
    Case("net_dorothea_truncated_gz", "networks", _net_bytes("dorothea", "dorothea_trunc.tsv.gz", truncated),
         ["DoRothEA", "dorothea_trunc.tsv.gz", "truncated or corrupt gzip", "expected a complete gzip stream"]),
    Case("net_string_corrupt_gz", "networks", _net_bytes("string", "string_corrupt.tsv.gz", corrupt_gzip),
         ["STRING", "string_corrupt.tsv.gz", "truncated or corrupt gzip", "expected a complete gzip stream"]),
    Case("net_string_info_bad_crc", "networks", _net_bytes("string_info", "info_crc.txt.gz", bad_crc),
         ["STRING protein.info", "info_crc.txt.gz", "CRC check failed", "expected a complete gzip stream"]),
    Case("net_huri_comma_delimiter", "networks",
         _net("huri", "huri_comma.tsv", lambda L: [x.replace(b"\t", b",") for x in L]),
         ["HuRI", "huri_comma.tsv", "line 1", "lacks column(s) ['protein1', 'protein2']", "expected tab-separated"]),
    Case("net_trrust_comma_delimiter", "networks",
         _net("trrust", "trrust_comma.tsv", lambda L: [x.replace(b"\t", b",") for x in L]),
         ["TRRUST", "trrust_comma.tsv", "line 1", "expected 4 tab-separated fields", "found 1"]),
    Case("net_dorothea_swapped_columns", "networks", _net("dorothea", "dorothea_swap.tsv.gz",
                                                          lambda L: swap_fields(L, 0, 1)),
         ["DoRothEA", "dorothea_swap.tsv.gz", "line 2", "field 'confidence' is 'ADNP'", "expected one of"]),
    Case("net_ensg_map_swapped_columns", "networks", _net("ensg", "ensg_swap.tsv", lambda L: swap_fields(L, 0, 2)),
         ["ENSG map", "ensg_swap.tsv", "line 2", "field 'ensg' is 'A1BG'", "expected an Ensembl gene id"]),
    Case("net_string_swapped_id_columns", "networks", _net("string", "string_swap.tsv.gz",
                                                           lambda L: swap_fields(L[:800], 0, 2)),
         ["STRING", "string_swap.tsv.gz", "line 2", "field 'protein1' is 'EPHA4'", "expected a STRING protein id"]),
    # a column of symbols where Ensembl ids belong (a few odd ids would only be rejects, counted)
    Case("net_huri_symbols_not_ensg", "networks",
         _net("huri", "huri_sym.tsv", lambda L: L[:1] + [x.split(b"\t")[0] + b"\tTP53" for x in L[1:] if x]),
         ["HuRI", "huri_sym.tsv", "line 2", "field 'protein2' is 'TP53'", "expected an Ensembl gene id"]),
    Case("net_trrust_too_few_fields", "networks",
         _net("trrust", "trrust_short.tsv", lambda L: L[:49] + [b"\t".join(L[49].split(b"\t")[:3])] + L[50:]),
         ["TRRUST", "trrust_short.tsv", "line 50", "expected 4 tab-separated fields", "found 3"]),
    Case("net_huri_blank_line_middle", "networks", _net("huri", "huri_blank.tsv", lambda L: L[:99] + [b""] + L[99:]),
         ["HuRI", "huri_blank.tsv", "line 100", "expected 2 tab-separated fields", "found a blank line"]),
    Case("net_dorothea_non_numeric_mor", "networks",
         _net("dorothea", "dorothea_mor.tsv.gz", lambda L: set_field(L, 77, 3, b"high")),
         ["DoRothEA", "dorothea_mor.tsv.gz", "line 77", "field 'mor' is 'high'", "expected a finite number"]),
    Case("net_dorothea_unknown_confidence", "networks",
         _net("dorothea", "dorothea_conf.tsv.gz", lambda L: set_field(L, 5, 1, b"Z")),
         ["DoRothEA", "dorothea_conf.tsv.gz", "line 5", "field 'confidence' is 'Z'", "expected one of"]),
    Case("net_trrust_unknown_mode", "networks", _net("trrust", "trrust_mode.tsv", lambda L: set_field(L, 12, 2, b"Activ")),
         ["TRRUST", "trrust_mode.tsv", "line 12", "field 'mode' is 'Activ'", "expected one of"]),
    Case("net_huri_empty_field", "networks", _net("huri", "huri_empty.tsv", lambda L: set_field(L, 30, 1, b"")),
         ["HuRI", "huri_empty.tsv", "line 30", "field 'protein2' is empty"]),
    Case("net_huri_truncated_mid_row", "networks", _huri_cut,
         ["HuRI", "huri_cut.tsv", "line 3000", "expected 2 tab-separated fields", "found 1"]),
    Case("net_alias_map_not_utf8", "networks",
         _net("alias", "alias_latin1.tsv", lambda L: set_field(L, 20, 0, L[19].split(b"\t")[0] + b"\xe9")),
         ["alias map", "alias_latin1.tsv", "line 20", "is not UTF-8 text", "expected a UTF-8 encoded"]),
    Case("net_string_info_header_only", "networks", _net("string_info", "info_header.txt.gz", lambda L: L[:1]),
         ["STRING protein.info", "info_header.txt.gz", "no data rows"]),
    Case("net_ensp_map_empty_file", "networks",
         lambda src, d: {"ensp": write_lines(d / "ensp_empty.tsv", [])},
         ["ENSP map", "ensp_empty.tsv", "empty file", "expected a tab-separated table with a header line"]),
    Case("net_huri_missing_file", "networks", lambda src, d: {"huri": d / "no_such_huri.tsv"},
         ["HuRI", "file not found", "no_such_huri.tsv"]),
    Case("net_metachar_path_bad_row", "networks", _metachar_dorothea,
         ["DoRothEA", f"{METACHAR_DIR}/dorothea bad;$X.tsv.gz", "line 9", "field 'mor' is 'up'",
          "expected a finite number"]),
]


# --------------------------------------------------------------------------------------------------
# aracne: `cellgraph aracne` on a real ARACNe-AP matrix
# --------------------------------------------------------------------------------------------------


def _mx(name: str, edit: Callable[[list[bytes]], list[bytes]]):
    return lambda src, d: {"expression": edited(src["matrix"], d / name, edit)}


def _regs(name: str, lines: list[bytes]):
    return lambda src, d: {"regulators": write_lines(d / name, lines)}


def _mx_cut(src, d):
    return {"expression": cut_mid_last_line(src["matrix"], d / "matrix_cut.tsv")[0]}


ARACNE_CASES = [
    Case("aracne_non_numeric_value", "aracne", _mx("matrix_text.tsv", lambda L: set_field(L, 9, 3, b"n/a?")),
         ["matrix_text.tsv", "line 9", "(column 4)", "'n/a?' is not a number"]),
    Case("aracne_too_few_fields", "aracne",
         _mx("matrix_short.tsv", lambda L: L[:6] + [b"\t".join(L[6].split(b"\t")[:-3])] + L[7:]),
         ["matrix_short.tsv", "line 7", "expected 41 tab-separated fields", "found 38 fields"]),
    Case("aracne_too_many_fields", "aracne", _mx("matrix_long.tsv", lambda L: L[:11] + [L[11] + b"\t1\t2"] + L[12:]),
         ["matrix_long.tsv", "line 12", "expected 41 tab-separated fields", "found 43 fields"]),
    Case("aracne_blank_line_middle", "aracne", _mx("matrix_blank.tsv", lambda L: L[:20] + [b""] + L[20:]),
         ["matrix_blank.tsv", "line 21", "expected 41 tab-separated fields", "found a blank line"]),
    Case("aracne_comma_delimiter", "aracne", _mx("matrix_comma.tsv", lambda L: [x.replace(b"\t", b",") for x in L]),
         ["matrix_comma.tsv", "line 1", "header has no tab", "expected a tab-separated header"]),
    Case("aracne_truncated_mid_row", "aracne", _mx_cut,
         ["matrix_cut.tsv", "line 61", "expected 41 tab-separated fields", "found 1 fields"]),
    Case("aracne_header_only", "aracne", _mx("matrix_header.tsv", lambda L: L[:1]),
         ["matrix_header.tsv", "no gene rows below the header"]),
    Case("aracne_duplicate_gene", "aracne",
         _mx("matrix_dup.tsv", lambda L: set_field(L, 15, 0, L[3].split(b"\t")[0])),
         ["matrix_dup.tsv", "1 gene names occur more than once"]),
    Case("aracne_nan_value", "aracne", _mx("matrix_nan.tsv", lambda L: set_field(L, 30, 5, b"NaN")),
         ["matrix_nan.tsv", "1 missing or non-finite values", "in 1 genes"]),
    Case("aracne_regulators_not_in_matrix", "aracne", _regs("tfs_absent.txt", [b"ZNF99999", b"NOTAGENE", b"XYZ1"]),
         ["tfs_absent.txt", "none of the 3 regulators", "is a non-constant gene of"]),
    Case("aracne_regulators_two_per_line", "aracne", _regs("tfs_two.txt", [b"# TFs", b"SPI1 CEBPB"]),
         ["tfs_two.txt", "line 2", "expected one regulator symbol", "'SPI1 CEBPB'"]),
    Case("aracne_mi_alpha_zero", "aracne", lambda src, d: {}, ["--mi-alpha", "must be in (0, 1)", "got 0.0"],
         ["--mi-alpha", "0"]),
    Case("aracne_consolidation_alpha_above_one", "aracne", lambda src, d: {},
         ["--consolidation-alpha", "must be in (0, 1]", "got 1.5"], ["--consolidation-alpha", "1.5"]),
    Case("aracne_dpi_tolerance_negative", "aracne", lambda src, d: {},
         ["--dpi-tolerance", "must be in [0, 1)", "got -0.1"], ["--dpi-tolerance", "-0.1"]),
    Case("aracne_truncated_h5ad", "aracne",
         lambda src, d: {"expression": truncated(src["h5ad"], d / "cells_trunc.h5ad")},
         ["cells_trunc.h5ad", "cannot be read as h5ad", "truncated file"]),
]


# --------------------------------------------------------------------------------------------------
# expression: `cellgraph expression` on real PBMC counts
# --------------------------------------------------------------------------------------------------


def _h5ad(name: str, edit: Callable):
    """A builder: the subset h5ad changed in memory by ``edit(adata)``, written as ``name``."""

    def build(src, d):
        import anndata as ad

        a = ad.read_h5ad(src["h5ad"])
        edit(a)
        a.write_h5ad(d / name)
        return {"expression": d / name}

    return build


def _set_x(a, fn):
    a.X = a.X.tocsr()
    fn(a.X.data)


def _dup_obs(a):
    a.obs_names = list(a.obs_names[:-1]) + [a.obs_names[0]]


def _dup_var(a):
    names = list(a.var_names)
    names[7] = names[2]
    a.var_names = names


EXPRESSION_CASES = [
    Case("expr_nan_counts", "expression", _h5ad("nan.h5ad", lambda a: _set_x(a, lambda v: v.__setitem__(slice(0, 3), float("nan")))),
         ["nan.h5ad", "X has 3 NaN", "expected raw UMI counts"]),
    Case("expr_negative_counts", "expression", _h5ad("neg.h5ad", lambda a: _set_x(a, lambda v: v.__setitem__(slice(0, 5), -1.0))),
         ["neg.h5ad", "5 negative", "expected raw UMI counts"]),
    Case("expr_non_integer_counts", "expression", _h5ad("frac.h5ad", lambda a: _set_x(a, lambda v: v.__setitem__(slice(0, 4), v[:4] + 0.5))),
         ["frac.h5ad", "4 non-integer", "raw counts (integers)"]),
    Case("expr_duplicated_obs_names", "expression", _h5ad("dupobs.h5ad", _dup_obs),
         ["dupobs.h5ad", "obs_names has 1 duplicated", "must be unique"]),
    Case("expr_duplicated_var_names", "expression", _h5ad("dupvar.h5ad", _dup_var),
         ["dupvar.h5ad", "var_names has 1 duplicated", "must be unique"]),
    Case("expr_missing_label_column", "expression", _h5ad("nolabel.h5ad", lambda a: a.obs.drop(columns="trueLabel", inplace=True)),
         ["nolabel.h5ad", "no label column 'trueLabel'", "available obs columns"]),
    Case("expr_truncated_h5ad", "expression",
         lambda src, d: {"expression": truncated(src["h5ad"], d / "counts_trunc.h5ad")},
         ["counts_trunc.h5ad", "cannot be read as h5ad", "truncated file"]),
    # QC that removes every Monocyte (all have < 1393 UMIs in the subset) while Monocyte is the held-out
    # type: the run stops (the whole run, not just the type).
    Case("expr_qc_empties_heldout_type", "expression", lambda src, d: {},
         ["--heldout-types", "Monocyte", "'Monocyte': 0", "--min-counts"],
         ["--min-counts", "1393", "--heldout-types", "Monocyte"]),
]


# --------------------------------------------------------------------------------------------------
# config: config/config.yaml validated against workflow/schemas/config.schema.yaml
# --------------------------------------------------------------------------------------------------


def _cfg(section: str | None, key: str, value):
    """A builder setting ``config[section][key] = value`` (``section`` None: the top level)."""

    def build(config):
        (config if section is None else config[section])[key] = value
        return config

    return build


CONFIG_CASES = [
    Case("cfg_string_for_number", "config", _cfg("expression", "min_counts", "500"),
         ["'500' is not of type 'integer'", "['expression']['min_counts']"]),
    Case("cfg_string_for_float", "config", _cfg("grn", "mi_pvalue", "1e-4"),
         ["'1e-4' is not of type 'number'", "['grn']['mi_pvalue']"]),
    Case("cfg_string_for_boolean", "config", _cfg("grn", "subclusters", "yes"),
         ["'yes' is not of type 'boolean'", "['grn']['subclusters']"]),
    Case("cfg_unknown_key", "config", _cfg("grn", "n_bootstrapz", 3),
         ["Additional properties are not allowed", "'n_bootstrapz' was unexpected", "['grn']"]),
    Case("cfg_unknown_top_level_key", "config", _cfg(None, "reslts", "out"),
         ["Additional properties are not allowed", "'reslts' was unexpected"]),
    Case("cfg_n_bins_below_minimum", "config", _cfg("tokenize", "n_bins", 1),
         ["1 is less than the minimum of 2", "['tokenize']['n_bins']"]),
    Case("cfg_negative_seed", "config", _cfg(None, "seed", -1), ["-1 is less than the minimum of 0", "['seed']"]),
    Case("cfg_mi_alpha_zero", "config", _cfg("grn", "mi_alpha", 0),
         ["0 is less than or equal to the minimum of 0", "['grn']['mi_alpha']"]),
    Case("cfg_consolidation_alpha_above_one", "config", _cfg("grn", "consolidation_alpha", 1.5),
         ["1.5 is greater than the maximum of 1", "['grn']['consolidation_alpha']"]),
    Case("cfg_integration_alpha_above_one", "config", _cfg("tokenize", "integration_alpha", 2.0),
         ["2.0 is greater than or equal to the maximum of 1", "['tokenize']['integration_alpha']"]),
    Case("cfg_beta_negative", "config", _cfg("spectral", "beta", -0.1),
         ["-0.1 is not valid under any of the given schemas", "['spectral']['beta']"]),
    Case("cfg_beta_not_a_number", "config", _cfg("spectral", "beta", "fast"),
         ["'fast' is not valid under any of the given schemas", "['spectral']['beta']"]),
    # The Chebyshev order K is not a config key: it is the smallest K whose coefficient tail is below tol.
    Case("cfg_chebyshev_tol_one", "config", _cfg("spectral", "tol", 1.0),
         ["1.0 is greater than or equal to the maximum of 1", "['spectral']['tol']"]),
    Case("cfg_probe_alpha_negative", "config", _cfg("evaluate", "probe_alpha", -1.0),
         ["-1.0 is less than or equal to the minimum of 0", "['evaluate']['probe_alpha']"]),
]


CASES = NETWORK_CASES + ARACNE_CASES + EXPRESSION_CASES + CONFIG_CASES
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"
