"""Writes sft_vs_trl.{json,md,png} here from the measurements in work/: the report of the last bench
call (Litespark SFT, Litespark pretraining, TRL at micro-batch 4, with micro-batch 2 measured by the
call before) and TRL at micro-batch 1, which a separate worker call measured (see README.md).

    PYTHONPATH=. python benchmarks/results/sft_h200_20261203/combine.py
"""

import json
from pathlib import Path

from litespark.bench.results import write_report
from litespark.bench.sft_vs_trl import plot, to_markdown

here = Path(__file__).parent
report = json.loads((here / "work" / "report_of_the_last_call.json").read_text())
trl = {m: json.loads((here / "work" / f"trl-mb{m}.result.json").read_text()) for m in (1, 2, 4)}
best = max(trl.values(), key=lambda r: r["tokens_per_s"])
report["results"]["trl"] = dict(
    best, tokens_per_s_by_micro_batch={str(m): r["tokens_per_s"] for m, r in trl.items()}, attempts=[]
)
report["command"] = "see README.md: three bench calls and one TRL worker call, combined by combine.py"
write_report(report, here / "sft_vs_trl", render=to_markdown, draw=plot)
print(to_markdown(report))
