"""Scipion's hosts.conf for a Slurm cluster: what a partition offers (queues), the file's text (hostsconf),
and the live cluster -> file step (live). Shared by the agent (on the instance), the operator's CLI and the
scipion role's filter."""
