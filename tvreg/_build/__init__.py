"""Building a skill artifact: from a checkpoint pair or a PEFT adapter, with calibrated codecs."""

DEFAULT_MAX_EVALUATIONS = 48
"""The most times a calibrated build scores the model, unless told otherwise.

Why here: the CLI, ``tvskill.toml``, :func:`~tvreg._build.build.build_skill` and the search
itself share this one figure, and this module imports nothing heavy. 48 is 2 references,
the uniform bisection over every family (at most 33), and the per-group search after it.
"""
