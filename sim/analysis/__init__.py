"""Theory and verdicts, pure: the KL cost of a change and kappa (`geometry`), the quadrant table
and advantage-variance split (`diagnostics`), paired contrasts, Holm and TOST (`stats`), and a
finished run's per-sweep-point summaries (`per_point`)."""
