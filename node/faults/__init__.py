"""Fault injection inside a running node: a wrapper around its transport and its API.

Real-cluster fault injection (``medchain fault ...``, ``medchain scenario run``) drives it
through the operator-signed admin API. It is off unless the node config says
``[faults] enabled = true``; only then does the node compose it in (:mod:`.wiring`).

    model       what a fault is, parse_fault, the [faults] config table, the errors
    layer       FaultLayer: the active faults, their seeded decisions, pause, status
    byzantine   what a byzantine node sends instead of its consensus messages
    served      served-block alteration (GET /blocks) as an API middleware
    peer        FaultyTransport: the transport under the layer
    signing     operator-signed admin requests: actions, signed bytes, the client side
    admin       the admin endpoints: signature, freshness and nonce checks
    wiring      how the node composes all of it

This package re-exports the names tools import; the wrappers (peer, admin, wiring), which load
the node's HTTP side, are imported from their modules.
"""

from node.faults.byzantine import (
    alter_certified_block,
    alternative_batch,
    byzantine_rewrite,
    equivocation_target,
)
from node.faults.layer import MAX_ACTIVE_FAULTS, ActiveFault, FaultLayer
from node.faults.model import (
    FAULT_KINDS,
    Byzantine,
    ByzantineMode,
    Delay,
    Direction,
    Drop,
    Duplicate,
    Fault,
    FaultConflict,
    FaultError,
    FaultsConfig,
    FaultsDisabled,
    FaultSpec,
    Partition,
    Pause,
    Reorder,
    faults_config_of,
    parse_fault,
    parse_faults_table,
)
from node.faults.served import alter_block_json
from node.faults.signing import (
    ACTION_CLEAR,
    ACTION_FAULT,
    ACTION_LIST,
    ADMIN_DOMAIN,
    MAX_SKEW_MS,
    SIGNATURE_HEADER,
    admin_signing_bytes,
    canonical_json,
    sign_admin_request,
)

__all__ = [
    "ACTION_CLEAR",
    "ACTION_FAULT",
    "ACTION_LIST",
    "ADMIN_DOMAIN",
    "FAULT_KINDS",
    "MAX_ACTIVE_FAULTS",
    "MAX_SKEW_MS",
    "SIGNATURE_HEADER",
    "ActiveFault",
    "Byzantine",
    "ByzantineMode",
    "Delay",
    "Direction",
    "Drop",
    "Duplicate",
    "Fault",
    "FaultConflict",
    "FaultError",
    "FaultLayer",
    "FaultSpec",
    "FaultsConfig",
    "FaultsDisabled",
    "Partition",
    "Pause",
    "Reorder",
    "admin_signing_bytes",
    "alter_block_json",
    "alter_certified_block",
    "alternative_batch",
    "byzantine_rewrite",
    "canonical_json",
    "equivocation_target",
    "faults_config_of",
    "parse_fault",
    "parse_faults_table",
    "sign_admin_request",
]
