"""``medchain scenario``: run a fault scenario on a real local cluster and check the outcome.

    medchain scenario run FILE... [--nodes N] [--seed S] [--out DIR] [--keep-cluster]
    medchain scenario list
    medchain scenario check FILE...

A scenario (TOML, see docs/faults.md and configs/scenarios/) is a timeline of faults applied
while a load of signed patient records runs. ``run`` starts a fresh cluster in a temporary
directory with fault injection enabled, then:

1. runs the load: a client submits signed records to random live nodes at a fixed rate and
   records its history (submit time, node, acknowledgement, commit observed);
2. applies the timeline: process faults through the launcher (kill -9, SIGSTOP, restart, wipe),
   message faults through the nodes' signed admin API; roles ("primary", "backup:1") are
   resolved against the cluster's view when the step fires;
3. at ``duration_s`` heals everything, keeps the load running until the cluster has made
   progress after every heal (at most ``recovery_s`` each), stops the load and lets the
   cluster settle (at most ``settle_s``);
4. checks (scripts/history.py, scripts/scenario/analyse.py): every commit the client saw is on
   every honest chain exactly once, chains agree, converge and verify, and progress resumed
   within ``recovery_s`` of every heal.

Writes OUT/report.json, OUT/timeline.png (commits per second, faults shaded), OUT/history.jsonl
(the client history), OUT/samples.jsonl (node status over time) and OUT/logs/ (node logs).
Exit status: 0 every check passed, 1 a check failed, 2 the scenario could not run (bad file,
cluster did not start).
"""

from scripts.scenario.analyse import Sample, view_changes
from scripts.scenario.bench import BenchTimeline, bench_scenario
from scripts.scenario.cluster import RunError, enable_faults
from scripts.scenario.main import add_scenario_parser, main, main_scenario
from scripts.scenario.params import (
    SCENARIO_DIR,
    Scenario,
    ScenarioError,
    Selector,
    Step,
    load_scenario,
    parse_scenario,
    resolve_all,
    shipped_scenarios,
)
from scripts.scenario.report import plot_timeline

__all__ = [
    "SCENARIO_DIR",
    "BenchTimeline",
    "RunError",
    "Sample",
    "Scenario",
    "ScenarioError",
    "Selector",
    "Step",
    "add_scenario_parser",
    "bench_scenario",
    "enable_faults",
    "load_scenario",
    "main",
    "main_scenario",
    "parse_scenario",
    "plot_timeline",
    "resolve_all",
    "shipped_scenarios",
    "view_changes",
]
