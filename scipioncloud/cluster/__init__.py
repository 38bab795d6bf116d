"""Scipion on a Slurm cluster: the queues a cluster offers (read from Slurm or from a ParallelCluster
configuration), the hosts.conf Scipion submits through, the ParallelCluster configuration itself, and the
per-queue check."""
