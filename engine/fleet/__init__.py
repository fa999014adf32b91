"""The engine as a fleet of Ray Serve replicas (``wisp serve --engine ray``).

The front end (sockets, sessions, registry) stays one process; inference runs
on replicas that each hold a whole :class:`engine.core.Engine` with its own
byte-budgeted model cache.  What crosses the network is the job interface of
:mod:`engine.jobs` (MessagePack bytes one way, events back), and model files
fetched by content hash from the front end's origin route.

- :mod:`engine.fleet.blobs` — a replica node's content-addressed disk cache (byte budget, one download per file
  per node, hash verified).  No Ray.
- :mod:`engine.fleet.routing` — how replicas are ranked for a job (pure, unit-tested).  No Ray.
- :mod:`engine.fleet.router` — that ranking as a Ray Serve request router.
- :mod:`engine.fleet.replica` — the deployments: ``EngineReplica`` (inference), ``TrainingReplica``.
- :mod:`engine.fleet.frontend` — ``FleetEngine``: the front end's engine, sending jobs to the fleet.
- :mod:`engine.fleet.cluster` — connecting to (or starting) a Ray cluster and deploying the application.
"""
