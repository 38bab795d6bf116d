"""Scipion on a Slurm cluster: the ParallelCluster configuration and CLI, and the per-queue check. The queues
and the hosts.conf Scipion submits through live in the agent (agent.scipion_hosts), which writes the file on
the instance; the CLI imports them."""
