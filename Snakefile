# cellgraph: from public gene networks and single-cell counts to trained GREmLN models and figures.
# This file is a table of contents: the rules live in workflow/rules/, one file per stage, and every
# rule calls one `cellgraph <stage>` command of the package.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/networks.smk"
include: "workflow/rules/sources.smk"
include: "workflow/rules/datasets.smk"
include: "workflow/rules/corpus.smk"
include: "workflow/rules/multigraph.smk"
include: "workflow/rules/expression.smk"
include: "workflow/rules/grn.smk"
include: "workflow/rules/spectral.smk"
include: "workflow/rules/tokenize.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/transfer.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/perturbation.smk"
include: "workflow/rules/ablation.smk"
include: "workflow/rules/diffusion.smk"


rule all:
    input:
        final_outputs(),
        optional_targets(rules),
    default_target: True
