"""wsecho's benchmark driver (run it with scripts/bench.sh; usage in usage.txt).

  main.py     the options' checks, the run plan and the table plan, results.md
  context.py  what the groups share: options, paths, the server under test
  servers.py  starting and stopping processes, free ports, readiness
  runs.py     wsload runs and their JSON (target/bench/raw/)
  report.py   number formats, targets, the tables, comparison.tsv, the chart
  peers.py    preparing and starting the servers of --compare (sources in peers/)
  groups/     one module per group of rows: echo, hold, greeting, fanout,
              wide_fanout, burst, never_reader, resume, storm, cluster, tls,
              rooms, wide, soak

Python 3.11 or newer, standard library only (the chart's matplotlib lives in a
virtual environment of its own, in BENCH_CACHE).
"""
