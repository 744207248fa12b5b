"""The decision core: what a message is, which thread it belongs to, who gets it.

Pure: it imports the standard library and itself, nothing else."""
