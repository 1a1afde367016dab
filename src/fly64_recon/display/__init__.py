"""What a person sees of a run: the console, the jobs' progress as it listens to them,
the closing summary, and where log records go."""
