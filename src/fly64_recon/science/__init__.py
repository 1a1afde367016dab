"""The science: the beam, convergence, metrics and what a score stands on. Pure
functions on arrays; nothing here knows Kedro, a pipeline or the display."""
