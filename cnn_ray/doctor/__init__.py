"""The doctor: a bounded profile of a recipe, a verdict (input-, compute-, memory-,
communication-, start-up- or overhead-bound) with its evidence, and ranked config changes.
:mod:`.verdict` is pure; :mod:`.profile` needs torch only; :mod:`.run` is the Ray glue."""
