"""The paper's published numbers (Appendix B, Tables 1-8), as data, for the study to compare against.

Source: Liu, Blondel, Riquelme, Puigcerver, "Routers in Vision Mixture of Experts: An Empirical Study",
TMLR 2024, Appendix B. ``paper_tables.csv`` holds one row per (table, router, capacity):

- Tables 1, 2, 3: JFT-300M precision@1 and training cost in TPUv3-days, for B/32, B/16 and L/16.
- Tables 4, 6, 8: ImageNet-1k 10-shot linear-probe accuracy, for B/32, B/16 and L/16.
- Tables 5 and 7 carry no numbers of their own: in the paper's text they are the titles ("B16 on ImageNet
  10-shot", "L16 on ImageNet 10-shot") placed above the data that Tables 6 and 8 caption.
- Two configurations were not reported (an empty cell): sparsity-constrained Expert Choice at c = 1 on L/16,
  and Soft MoE at c = 2 on L/16 (a training instability, sec. 3.2).

Table 1 names its first two rows "Softmax (k = 1)" and "Sinkhorn (k = 1)": they are the Token Choice routers.
The values were transcribed once and checked cell by cell against the paper's text.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from importlib import resources

METRICS = {"jft_precision_at_1": "JFT-300M precision@1", "imagenet_10shot": "ImageNet-1k 10-shot accuracy"}
ARCHITECTURES = ("B/32", "B/16", "L/16")
SOURCE = "Liu et al., Routers in Vision Mixture of Experts, TMLR 2024, Appendix B"

# Section 3.4 gives the Figure 3 ablation only as a curve and a sentence: "The 'with softmax combine' variant
# achieves approximately 1% higher accuracy on the JFT300M dataset" (B/32, k = 1 and k = 2).
FIGURE3_GAIN_PERCENT = 1.0


@dataclasses.dataclass(frozen=True)
class PaperResult:
    table: int
    architecture: str
    metric: str
    router: str
    factor: int
    accuracy: float  # a fraction in [0, 1]; NaN where the paper reports none
    tpu_v3_days: float  # NaN for the 10-shot tables and where the paper reports none


def load() -> list[PaperResult]:
    """All 72 published cells, in the paper's row order."""
    text = resources.files(__package__).joinpath("paper_tables.csv").read_text()
    rows = []
    for row in csv.DictReader(text.splitlines()):
        rows.append(
            PaperResult(
                table=int(row["table"]),
                architecture=row["architecture"],
                metric=row["metric"],
                router=row["router"],
                factor=int(row["factor"]),
                accuracy=float(row["accuracy_percent"]) / 100 if row["accuracy_percent"] else math.nan,
                tpu_v3_days=float(row["tpu_v3_days"]) if row["tpu_v3_days"] else math.nan,
            )
        )
    return rows


def lookup(results: list[PaperResult], metric: str, architecture: str, router: str, factor: int) -> PaperResult:
    for r in results:
        if (r.metric, r.architecture, r.router, r.factor) == (metric, architecture, router, factor):
            return r
    raise KeyError(f"the paper reports no {metric} for {router} at factor {factor} on {architecture}")
