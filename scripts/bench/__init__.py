"""``medchain bench``: measure a medchain cluster's throughput and latency.

    medchain bench [--nodes N] [--duration S | --count N] [--rate TX/S | --concurrency C] ...
    medchain bench --clients C --outstanding K --batch B ...   (closed loop: C clients, each
                                                                K requests of B records)
    medchain bench --nodes URL,URL,... (--dir DIR | --key FILE [--hospital NAME]) ...
    medchain bench sweep --nodes 4,7,10 --block-txs 100,500 [other bench parameters]

With ``--nodes N`` the bench starts an N-node cluster of its own in ``OUT/cluster`` (through the
cluster launcher, with the consensus parameters written into every node's config) and always
stops it again, on success, error or Ctrl-C. With ``--nodes URL,...`` or ``--dir DIR`` it loads
a cluster that is already running.

The load comes from a separate process (``scripts.bench.loadgen``) that signs every
transaction before the clock starts, then submits them over HTTP, open loop (``--rate``) or
closed loop (``--concurrency``, or ``--clients`` x ``--outstanding``), and observes commits by
polling one node's ``GET /status`` at a fixed interval (``--poll-ms``) and reading the new
blocks' tx ids with ``GET /blocks?txs=ids`` (headers and ids only: observing costs the observed
node little). In a closed loop until commit, each request also long-polls
``GET /tx/{id}?wait_ms=`` on the node that accepted it, and that answer ends the request.
This process samples every node's CPU and memory once a second, shows progress, and turns the
raw records into:

    OUT/result.json                 headline figures, per-node resources, errors, and a manifest
    OUT/timeline.csv                one row per second
    OUT/throughput.png              committed (and sent) transactions per second over time
    OUT/latency.png                 latency percentiles over time
    OUT/latency_distribution.png    latency histogram and CDF
    OUT/cluster/                    the bench's cluster: configs and node logs (keys and chain
                                    data are deleted unless --keep-cluster)

What the numbers mean (also written into result.json):

- throughput_tx_per_s: transactions in blocks observed committed during the measurement window
  (after the warmup), divided by the window's length; blocks_per_s likewise.
- latency: for each transaction sent during the window, from its submission (closed loop: the
  moment its request was sent; open loop: the moment it was scheduled, so client-side queueing
  counts) to its commit: closed loop until commit (``latency_from`` "long-poll"), the arrival of
  the long poll's answer (or the observer's first sight of the block, if earlier); otherwise
  ("status-poll") the moment the observer first saw its block, which overstates the true
  latency by at most ``poll_ms`` plus one GET /status round trip: ``observation_resolution_ms``.
- cpu_us_per_tx: CPU-microseconds per committed transaction, per node and summed over the
  nodes (mean CPU percent / 100 * 1e6 / throughput).
- per_minute: throughput, latency p50/p99 and CPU-µs/tx of each full minute of the window, and a
  warning when the last is more than 10% worse than the first (``--duration 600`` for a
  10-minute run).
- the machine is shared by the nodes, the load generator and this process: CPU figures show
  who was busy. Nothing here asserts a speed; benchmarks are not tests.
"""

from scripts.bench.analyse import Distribution, LoadOutcome, Target, analyze, percentile
from scripts.bench.main import EXIT_INTERRUPTED, add_bench_parser, main, main_bench
from scripts.bench.params import BenchError, BenchParams, build_points

__all__ = [
    "EXIT_INTERRUPTED",
    "BenchError",
    "BenchParams",
    "Distribution",
    "LoadOutcome",
    "Target",
    "add_bench_parser",
    "analyze",
    "build_points",
    "main",
    "main_bench",
    "percentile",
]
