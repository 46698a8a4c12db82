"""Decision and learning core of slotbandit. Pure: no HTTP, no SQL, no clock.

Modules:
    errors      the exception tree of this package
    features    structured features and their escaped Vowpal Wabbit text form
    context     time / device / location / user features from plain request values
    policies    policy configurations (vw, linear, uniform, fixed) and the vw/uniform/fixed choosers
    linear      the exact Bayesian hybrid linear policy (ridge, SquareCB or Thompson pmf)
    rules       ordered rule lists on context and profile features
    choosers    build_chooser: the chooser of any policy configuration
    sampling    reproducible sampling from a pmf, seeded by the event id
    rewards     reward aggregation and the cost encoding used for learning
"""
