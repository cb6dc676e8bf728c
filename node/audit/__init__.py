"""Cross-audit of peers' chains and signed evidence of misbehaviour.

The node runs without it (``[audit] enabled = false``); its own read path (verify-on-read,
quarantine, repair) is ``node.reader``, which this package reads through. Modules:

``compare``   outcomes, verdicts and per-peer state (pure)
``client``    the bounded HTTP client for a peer's API
``peer``      one peer's comparison in one round (headers, whole blocks, settling)
``findings``  turning what a peer served into signed evidence records
``auditor``   the rounds over every peer, settings and the report
``served``    blocks and headers as a peer serves them (JSON), parsed and verified
``evidence``  signed evidence records and their strict JSON form
``verify_evidence``  offline verification of records; reading them from a file
``log``       the evidence table of the audit database
``routes``    GET /audit and GET /audit/evidence
"""
