"""The groups of rows, one module each: `measure(bench)` starts servers and runs
wsload, `rows(bench, report)` makes the rows from the runs' JSON (and, for the
groups the peers of --compare run too, `measure_peers` and `compare`; for the
echo and fan-out groups, `baseline`, the table against WSECHO_BIN_BASELINE).
The compared rows run as interleaved trials: trials.py, Bench.interleave."""
