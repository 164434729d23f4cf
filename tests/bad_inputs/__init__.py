"""A corpus of broken inputs derived from the vendored files of ``resources/demo`` (issue 17).

Every broken file is written at test time from a small real subset (see :mod:`bad_inputs.cases`);
nothing binary is committed.
"""
