"""``medchain audit``: every node's chain side by side, and offline checks of evidence.

    medchain audit [--dir DIR | --nodes URL,URL,...] [--last N] [--json]
    medchain audit --check-evidence FILE [--dir DIR | --config FILE] [--json]

For each node: height, head hash, how far it agrees with the others, whether every block it
holds verifies (hash links, Merkle roots, tx signatures, commit certificates against the
consortium's keys), its lag, and what its own auditor has found (evidence records,
quarantined and repaired blocks, from ``GET /audit``). With ``--dir``, a node that does not
answer is audited offline from its SQLite store (read only), so a stopped node is compared too.

Blocks are compared height by height with the majority of the nodes that hold that height.
Different heights with the same blocks are reported as ``lagging``, never as a divergence.
Exit status 1 on any divergence or any block that fails verification (or if no node could be
audited at all); 0 otherwise. ``--check-evidence`` verifies evidence records (a file saved
from ``GET /audit/evidence``, one record, or JSON lines) against the consortium's keys; exit
status 1 if any record fails.

``scripts/cli.py`` registers it with ``add_audit_parser(sub)``; the parser's default ``func``
is :func:`main_audit`. The stages, one module each: ``targets`` (which nodes, which keys),
``gather`` (each node's chain, live or offline, verified), ``compare`` (pure: the majority
comparison), ``report`` (table, verdict, JSON), ``evidence`` (``--check-evidence``) and
``cli`` (the argparse table and the command).
"""

from scripts.audit.cli import add_audit_parser, main_audit

__all__ = ["add_audit_parser", "main_audit"]
