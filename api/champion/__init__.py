"""Champion and challenger, chosen by evidence: challengers, auto-optimize, policy revisions, holdout.

A slot's serving policy (the champion) can have challengers: policies of a model kind that the
learner trains on the champion's stream (its decisions, with their logged propensities) without
serving them. Auto-optimize, a slot setting, evaluates the champion's snapshot against its
challengers' and candidate configurations' replays on recent traffic on a schedule, and promotes
only when the paired lower confidence bound says so and the logging-health check passes; every
promotion is an audited, reversible policy revision. A holdout, another slot setting, serves a
salted-hash share of units the slot's baseline and never learns from them, so the lift of
personalization is measured continuously with the experiment report's statistics.

One role per file (import them by name; this package imports nothing, so ``api.learner`` and
``api.decide`` can use :mod:`api.champion.holdout` without a cycle):

    holdout.py      the holdout draw, and the lift of personalization against it
    schemas.py      the ``auto_optimize`` setting and request bodies (msgspec structs)
    challengers.py  add, change, list and remove challengers
    revisions.py    promotions, dry-run recommendations and rollbacks (``policy_revisions``)
    optimize.py     one auto-optimize run, the per-slot claim and the scheduled pass
    routes.py       the admin API
    cli.py          ``slotbandit challenger``, ``slotbandit optimize``, ``slotbandit revisions``
    feature.py      how the feature joins the service (:data:`FEATURE`): routes, job, commands
"""
