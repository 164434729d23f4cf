"""config/README.md documents config/config.yaml: a heading per section, every key, the true defaults.

The README's tables have a `key` column holding the full dotted path of a key in backticks
(`expression.min_counts`), a `default` column (a single code span holds a YAML literal; anything else, such as
"17 entries (below)", is a summary), an `allowed` column and, where the section has one, a `paper.yaml` column.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
README = REPO / "config" / "README.md"
CONFIG = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
PAPER = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())

# Mappings whose keys are names of data (files, data sets, organisms' source files), not settings: the README
# summarises them instead of listing every entry, so their leaves are not required one by one. The mapping
# itself must still be documented as a row (`sources.files`, ...), and the entry fields of `sources.files` and
# `datasets.files` (source, url, sha256, ...) must be described (test_entry_fields_documented), and so must the
# fields of `transfer.datasets`.
# `diffusion.per_dataset` is *not* excluded: its few overrides are settings and are documented as keys.
EXCLUDED = {"sources.files", "datasets.files", "multigraph.inputs", "multigraph.full", "transfer.datasets"}

# Scalar keys whose default must be shown as a literal and must equal config.yaml's (test (c)); every other
# row with a literal default is compared too.
HANDFUL = [
    "results", "seed", "expression.min_counts", "expression.target_sum", "expression.counts_layer",
    "grn.mi_pvalue", "grn.metacells", "grn.subclusters", "spectral.beta", "spectral.tol", "tokenize.max_seq_len",
    "train.mask_rate", "evaluate.probe_alpha", "sources.timeout", "corpus.census_version",
    "multigraph.thresholds.string_links.combined_score", "perturbation.lr", "perturbation.yeast_hops",
    "diffusion.guidance_scale", "diffusion.per_dataset.papalexi.max_steps",
]

CODE = re.compile(r"^`([^`]*)`$")


def _text() -> str:
    return README.read_text()


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted path, value) of every leaf; a list is a leaf; EXCLUDED mappings are yielded whole."""
    if isinstance(node, dict) and prefix not in EXCLUDED:
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, node


def _lookup(config: dict, dotted: str) -> Any:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise KeyError(dotted)
        node = node[part]
    return node


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _rows(text: str) -> dict[str, dict[str, str]]:
    """Rows of every table whose header has a `key` column, by dotted key (the key cell's code span)."""
    rows: dict[str, dict[str, str]] = {}
    lines = text.splitlines()
    header: list[str] | None = None
    for i, line in enumerate(lines):
        if not line.startswith("|"):
            header = None
            continue
        if i + 1 < len(lines) and re.match(r"^\|(\s*-+\s*\|)+\s*$", lines[i + 1]):
            header = _cells(line)
            continue
        if header is None or re.match(r"^\|(\s*-+\s*\|)+\s*$", line) or "key" not in header:
            continue
        cells = _cells(line)
        assert len(cells) == len(header), f"table row with {len(cells)} cells under a {len(header)}-column header: {line}"
        row = dict(zip(header, cells))
        match = CODE.match(row["key"])
        assert match, f"key cell is not one code span: {line}"
        assert match.group(1) not in rows, f"key {match.group(1)} documented twice"
        rows[match.group(1)] = row
    return rows


def _same(a: Any, b: Any) -> bool:
    """Equal with the same types (1 is not 1.0, true is not 1), lists and mappings compared element-wise."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


# ---- (a) a heading per top-level key, in config.yaml's order ----

@pytest.mark.parametrize("key", list(CONFIG))
def test_heading_per_top_level_key(key):
    assert re.search(rf"^## {re.escape(key)}\s*$", _text(), re.M), f"config/README.md has no '## {key}' heading"


def test_headings_in_config_order():
    headings = re.findall(r"^## (\S+)\s*$", _text(), re.M)
    assert [h for h in headings if h in CONFIG] == list(CONFIG)


# ---- (b) every leaf key documented as `dotted.key` ----

def test_every_leaf_key_documented():
    text = _text()
    missing = [path for path, _ in _leaves(CONFIG) if f"`{path}`" not in text]
    assert not missing, f"keys of config.yaml not in config/README.md: {missing}"


def test_every_leaf_key_has_a_table_row():
    rows = _rows(_text())
    missing = [path for path, _ in _leaves(CONFIG) if path not in rows]
    assert not missing, f"keys of config.yaml without a table row: {missing}"


def test_no_invented_keys():
    """Every documented key is a key of config.yaml or of paper.yaml (no stale or made-up rows)."""
    for key in _rows(_text()):
        found = False
        for config in (CONFIG, PAPER):
            try:
                _lookup(config, key)
                found = True
            except KeyError:
                pass
        assert found, f"config/README.md documents `{key}`, which neither config.yaml nor paper.yaml has"


def test_entry_fields_documented():
    text = _text()
    for section in ("sources", "datasets"):
        fields = {f for entry in CONFIG[section]["files"].values() for f in entry}
        fields |= set(SCHEMA["properties"][section]["properties"]["files"]["additionalProperties"]["properties"])
        missing = sorted(f for f in fields if f"`{f}`" not in text)
        assert not missing, f"{section}.files entry fields not described: {missing}"
    fields = set(SCHEMA["properties"]["transfer"]["properties"]["datasets"]["additionalProperties"]["properties"])
    fields |= {f for entry in PAPER["transfer"]["datasets"].values() for f in entry}
    missing = sorted(f for f in fields if f"`{f}`" not in text)
    assert not missing, f"transfer.datasets entry fields not described: {missing}"
    for which in ("inputs", "full"):
        for organism, sources in CONFIG["multigraph"][which].items():
            missing = sorted(s for s in sources if f"`{s}`" not in text)
            assert not missing, f"multigraph.{which}.{organism} sources not named: {missing}"


# ---- (c) defaults and paper.yaml values shown are the files' values ----

@pytest.mark.parametrize("key", HANDFUL)
def test_handful_of_defaults(key):
    row = _rows(_text())[key]
    match = CODE.match(row["default"])
    assert match, f"default of `{key}` is not a literal: {row['default']!r}"
    shown = yaml.safe_load(match.group(1))
    assert _same(shown, _lookup(CONFIG, key)), f"`{key}`: README shows {shown!r}, config.yaml has {_lookup(CONFIG, key)!r}"


def test_every_literal_default_matches_config():
    wrong = []
    for key, row in _rows(_text()).items():
        match = CODE.match(row["default"])
        if not match:
            continue
        shown = yaml.safe_load(match.group(1))
        try:
            actual = _lookup(CONFIG, key)
        except KeyError:
            wrong.append(f"{key}: literal default but no such key in config.yaml")
            continue
        if not _same(shown, actual):
            wrong.append(f"{key}: README {shown!r}, config.yaml {actual!r}")
    assert not wrong, wrong


def test_every_scalar_default_is_shown():
    rows = _rows(_text())
    summarised = [key for key, value in _leaves(CONFIG)
                  if not isinstance(value, dict) and not CODE.match(rows[key]["default"])]
    assert not summarised, f"scalar or list defaults not shown as a literal: {summarised}"


def test_paper_column_matches_paper_yaml():
    rows = _rows(_text())
    for key, value in _leaves(PAPER):
        assert key in rows, f"paper.yaml sets `{key}` but config/README.md has no row for it"
        cell = rows[key].get("paper.yaml", "")
        match = CODE.match(cell)
        assert match, f"`{key}`: paper.yaml sets {value!r} but the paper.yaml column shows {cell!r}"
        assert _same(yaml.safe_load(match.group(1)), value), f"`{key}`: paper.yaml column {cell} != {value!r}"
    paper_keys = {key for key, _ in _leaves(PAPER)}
    for key, row in rows.items():
        if row.get("paper.yaml"):
            assert key in paper_keys, f"`{key}` has a paper.yaml value but paper.yaml does not set it"


# ---- allowed values: every enumeration of the schema is listed in full ----

def _schema_enums(node: dict, prefix: str = "") -> Iterator[tuple[str, list]]:
    for key, sub in node.get("properties", {}).items():
        path = f"{prefix}.{key}" if prefix else key
        if "enum" in sub:
            yield path, sub["enum"]
        elif isinstance(sub.get("items"), dict) and "enum" in sub["items"]:
            yield path, sub["items"]["enum"]
        if path not in EXCLUDED:
            yield from _schema_enums(sub, path)


def test_schema_enums_listed():
    rows = _rows(_text())
    enums = list(_schema_enums(SCHEMA))
    assert len(enums) > 20
    for key, values in enums:
        assert key in rows, f"`{key}` (an enumeration in the schema) has no row"
        missing = [v for v in values if f"`{v}`" not in rows[key]["allowed"]]
        assert not missing, f"`{key}`: allowed values {missing} of the schema not listed"
