"""`realnet bench`: the paper's tables and ablations as resumable suites of fit + test cells.

- `suite`: the suite YAML schema and its expansion into cells (no torch).
- `runner`: runs cells into <out>/<suite>/<cell id>/, keeps complete ones, records failures.
- `tables` / `plots`: Markdown + CSV tables in the paper's format, Fig. 5-style line plots.
- `efficiency`: parameters, checkpoint size, peak RSS, images/s against the backbone alone.
"""
