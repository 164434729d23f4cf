# Config validation and every path of the workflow, in one place.
import shlex

from snakemake.utils import validate


validate(config, schema="../schemas/config.schema.yaml")

RESULTS = config["results"]
MODELS = config["train"]["models"]


def res(path):
    """A path under the results folder."""
    return f"{RESULTS}/{path}"


def log_of(rule_name):
    return res(f"logs/{rule_name}.log")


def bench_of(rule_name):
    return res(f"benchmarks/{rule_name}.tsv")


def flags(section, keys, overrides=None):
    """Command-line flags for `cellgraph <stage>` from config[section]: key a_b -> --a-b value (shell-quoted).
    ``overrides`` (a dict) replaces values of config[section] (e.g. one dataset's settings)."""
    out = []
    overrides = overrides or {}
    for key in keys:
        value = overrides.get(key, config[section][key])
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            if value:
                out.append(flag + " " + " ".join(shlex.quote(str(v)) for v in value))
        else:
            out.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(out)


# token shards of the tokenize stage; "pretrain" holds the unlabelled corpus (data.pretrain) when one is set
PRETRAIN = config["data"].get("pretrain")
TOKEN_SHARDS = ["train", "val", "test", "heldout", "train_integrated"] + (["pretrain"] if PRETRAIN else [])

FIGURES = ["confusion_matrices", "roc_pr_curves", "linear_probe"]
TABLES = ["table1_cell_type", "table2_ablation", "table2_paired"]


def final_outputs():
    return (
        [res(f"figures/{name}.png") for name in FIGURES]
        + [res(f"tables/{name}.{ext}") for name in TABLES for ext in ("csv", "md")]
    )
