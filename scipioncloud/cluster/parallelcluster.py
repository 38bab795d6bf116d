"""AWS ParallelCluster 3 (Slurm) configuration for Scipion: built from our images and the operator's
choices, checked by aws-parallelcluster's own schema."""

PCLUSTER_VERSION = "3.16.1"
