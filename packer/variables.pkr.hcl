# Every variable of the bake, declared once with its default. Override order (later wins):
#   1. the defaults below
#   2. images/<image>.pkrvars.hcl        what differs per image
#   3. build/<image>-<time>.pkrvars.hcl  written by `scipioncloud bake`: region, copies, git revision,
#                                        component versions, agent wheel (and, in the rehearsal, the
#                                        emulator endpoint and SSH target)
# Packer 1.6.6 (Debian's, used by the tests) must accept everything in this folder: no data sources,
# no required_plugins (they live in plugins/plugins.pkr.hcl), no regex(), no imds_support.

variable "image_name" {
  type        = string
  description = "Image definition name (images/<image_name>.pkrvars.hcl and .yml)."
}

variable "image_version" {
  type        = string
  description = "Version of this image definition, tagged on the AMI."
  default     = "0.1.0"
}

variable "git_revision" {
  type        = string
  description = "Git revision of the repository that baked the image (provenance tag)."
  default     = "unknown"
}

variable "build_time" {
  type        = string
  description = "UTC build time stamp (YYYYMMDD-hhmmss) in the AMI name; the bake driver sets it."
  default     = "00000000-000000"
}

variable "ubuntu_version" {
  type        = string
  description = "Ubuntu LTS base: 24.04 (noble, the default) or 22.04 (jammy, standard support until 2027-06)."
  default     = "24.04"
  validation {
    condition     = contains(["22.04", "24.04"], var.ubuntu_version)
    error_message = "The ubuntu_version must be 22.04 or 24.04."
  }
}

variable "base_ami_name" {
  type        = string
  description = "Base AMI name pattern; empty: Canonical's Ubuntu for ubuntu_version. Cluster images use ParallelCluster's official AMI (docs/cluster.md)."
  default     = ""
}

variable "base_ami_owner" {
  type        = string
  description = "Owner of the base AMI: 099720109477 (Canonical), or amazon for ParallelCluster's official AMIs."
  default     = "099720109477"
}

variable "region" {
  type        = string
  description = "Region the build instance runs in and the AMI is made in."
  default     = "eu-west-1"
}

variable "ami_regions" {
  type        = list(string)
  description = "Other regions the AMI is copied to."
  default     = []
}

variable "ami_users" {
  type        = list(string)
  description = "AWS account ids the AMI is shared with."
  default     = []
}

variable "ami_groups" {
  type        = list(string)
  description = "Groups the AMI is shared with (\"all\" makes it public)."
  default     = []
}

variable "instance_type" {
  type        = string
  description = "Build instance type; a GPU type so the driver is checked during the bake."
  default     = "g4dn.xlarge"
}

variable "root_volume_size_gb" {
  type        = number
  description = "Size of the gp3 root volume."
  default     = 40
}

variable "ansible_vars_file" {
  type        = string
  description = "The image's Ansible vars file (images/<image>.yml), passed as extra vars."
}

variable "agent_wheel" {
  type        = string
  description = "Wheel of this repository for the agent role (scipioncloud bake builds it)."
}

variable "verify_gpu" {
  type        = bool
  description = "The in-image verification requires a working NVIDIA driver (nvidia-smi)."
  default     = true
}

variable "ansible_playbook" {
  type        = string
  description = "The ansible-playbook the provisioners run (the driver passes the one installed with ScipionCloud)."
  default     = "ansible-playbook"
}

variable "ansible_overrides_file" {
  type        = string
  description = "Optional Ansible vars file applied after the image's (a site's package mirror, or the rehearsal's local repository)."
  default     = ""
}

variable "gpu_required" {
  type        = bool
  description = "The image needs an NVIDIA GPU; tagged scipioncloud:gpu so `scipioncloud launch` refuses CPU-only types."
  default     = true
}

variable "component_versions" {
  type        = map(string)
  description = "Pinned component versions, tagged on the AMI and its snapshots as scipioncloud:<name>."
  default     = {}
}

variable "custom_endpoint_ec2" {
  type        = string
  description = "EC2 endpoint override (empty: AWS). The rehearsal points it at the local emulator."
  default     = ""
}

variable "skip_aws_checks" {
  type        = bool
  description = "Skip credential, region and metadata checks (the rehearsal's emulator only)."
  default     = false
}

variable "ssh_host" {
  type        = string
  description = "SSH target override (empty: the build instance's address). The rehearsal's sshd."
  default     = ""
}

variable "ssh_port" {
  type        = number
  description = "SSH port of the build instance."
  default     = 22
}

variable "manifest_path" {
  type        = string
  description = "Where the manifest post-processor writes."
  default     = "build/packer-manifest.json"
}

variable "agent_command" {
  type        = string
  description = "The agent's command on the machine (role agent's agent_venv/bin/scipioncloud-agent)."
  default     = "/opt/scipioncloud/venv/bin/scipioncloud-agent"
}

variable "version_info_remote" {
  type        = string
  description = "Where the image keeps its record of what was installed (scipioncloud-agent version-info)."
  default     = "/usr/share/scipioncloud/version-info.json"
}

variable "version_info_path" {
  type        = string
  description = "Where the bake downloads that record to (the bake driver sets it next to the manifest)."
  default     = "build/version-info.json"
}

variable "version_info_expect" {
  type        = list(string)
  description = "Components the image's roles install (nvidia_driver, cuda, turbovnc, scipion, ...): missing fails."
  default     = []
}
