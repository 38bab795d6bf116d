"""The tags that mark what ScipionCloud made. The bake tags each AMI with TAG_IMAGE (the image
definition's name, e.g. "scipion-desktop") and TAG_GPU ("required" when the image needs an NVIDIA GPU);
`launch` tags instances, volumes and security groups with TAG_MANAGED."""

TAG_IMAGE = "scipioncloud:image"
TAG_GPU = "scipioncloud:gpu"
TAG_MANAGED = "scipioncloud:managed"
TAG_INSTANCE = "scipioncloud:instance"  # on a security group: the instance it was made for
