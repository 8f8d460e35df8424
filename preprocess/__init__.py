"""Per-clip media work for radio: probe, decode, audio, mel, landmarks, alignment, schema.

Nothing in this package imports Apache Beam; ``pipelines/`` wires these functions into jobs.
"""
