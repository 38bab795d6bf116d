# The bake: an Ubuntu LTS base from Canonical (for cluster images ParallelCluster's official AMI, through
# base_ami_name/base_ami_owner), the roles of roles/site.yml with the image's vars, a reboot when the driver
# install asks for one, the in-image verification, sysprep last, then the AMI (copied and
# shared as asked, tagged with its provenance) and the manifest.

locals {
  ubuntu_codename = { "22.04" = "jammy", "24.04" = "noble" }[var.ubuntu_version]
  ami_name        = "${var.image_name}-${var.image_version}-ubuntu-${var.ubuntu_version}-${var.build_time}"
  component_tags  = { for name, version in var.component_versions : "scipioncloud:${name}" => version }
  tags = merge(local.component_tags, {
    "Name"                    = local.ami_name
    "scipioncloud:image"      = var.image_name
    "scipioncloud:version"    = var.image_version
    "scipioncloud:git"        = var.git_revision
    "scipioncloud:base-ami"   = "{{ .SourceAMI }}"
    "scipioncloud:base-name"  = "{{ .SourceAMIName }}"
    "scipioncloud:ubuntu"     = var.ubuntu_version
    "scipioncloud:build-time" = var.build_time
    "scipioncloud:gpu"        = var.gpu_required ? "required" : "optional"
  })
  ansible_env = [
    "ANSIBLE_HOST_KEY_CHECKING=False",
    "ANSIBLE_FORCE_COLOR=0",
    "ANSIBLE_ROLES_PATH=${path.root}/../roles",
  ]
}

source "amazon-ebs" "ubuntu" {
  region        = var.region
  instance_type = var.instance_type
  ami_name      = local.ami_name
  ami_regions   = var.ami_regions
  ami_users     = var.ami_users
  ami_groups    = var.ami_groups
  ena_support   = true

  source_ami_filter {
    filters = {
      name                = var.base_ami_name != "" ? var.base_ami_name : "ubuntu/images/hvm-ssd*/ubuntu-${local.ubuntu_codename}-${var.ubuntu_version}-amd64-server-*"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.base_ami_owner] # Canonical by default
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.root_volume_size_gb
    volume_type           = "gp3"
    throughput            = 125
    iops                  = 3000
    delete_on_termination = true
  }

  temporary_key_pair_type = "ed25519"
  ssh_username            = "ubuntu"
  ssh_host                = var.ssh_host
  ssh_port                = var.ssh_port
  ssh_timeout             = "15m"

  custom_endpoint_ec2        = var.custom_endpoint_ec2
  skip_credential_validation = var.skip_aws_checks
  skip_metadata_api_check    = var.skip_aws_checks
  skip_region_validation     = var.skip_aws_checks

  tags          = local.tags
  snapshot_tags = local.tags
  run_tags = {
    "Name"               = "packer ${local.ami_name}"
    "scipioncloud:image" = var.image_name
  }
}

build {
  sources = ["source.amazon-ebs.ubuntu"]

  provisioner "ansible" {
    playbook_file    = "${path.root}/../roles/site.yml"
    command          = var.ansible_playbook
    user             = "ubuntu"
    use_proxy        = false
    ansible_env_vars = local.ansible_env
    extra_arguments = concat([
      "--extra-vars", "@${var.ansible_vars_file}",
      "--extra-vars", "agent_wheel=${var.agent_wheel}",
      "--extra-vars", "ansible_python_interpreter=/usr/bin/python3",
      # roles enable services for the instances' boot but start nothing user-specific on the build instance
      "--extra-vars", "scipioncloud_bake=true",
    ], var.ansible_overrides_file == "" ? [] : ["--extra-vars", "@${var.ansible_overrides_file}"])
  }

  # The driver install may ask for a reboot (new kernel module); the script disconnects, Packer reconnects.
  provisioner "shell" {
    script            = "${path.root}/scripts/reboot-if-required.sh"
    execute_command   = "sudo -S sh -c '{{ .Vars }} {{ .Path }}'"
    expect_disconnect = true
  }

  provisioner "shell" {
    script           = "${path.root}/scripts/verify-image.sh"
    execute_command  = "sudo -S sh -c '{{ .Vars }} {{ .Path }}'"
    environment_vars = ["VERIFY_GPU=${var.verify_gpu}", "IMAGE_NAME=${var.image_name}"]
    max_retries      = 5 # the first attempt may meet the machine still rebooting
  }

  # What actually went in (exact versions as installed, not as pinned), as amazon-eks-ami's version-info:
  # recorded in the image, downloaded for the bake record and the AMI tags. A component the image's roles
  # must have installed and did not fails the build here.
  provisioner "shell" {
    inline          = [join(" ", concat([var.agent_command, "version-info", "--out", var.version_info_remote], [for c in var.version_info_expect : "--expect ${c}"]))]
    execute_command = "sudo -S sh -c '{{ .Vars }} {{ .Path }}'"
  }

  provisioner "file" {
    direction   = "download"
    source      = var.version_info_remote
    destination = var.version_info_path
  }

  # Last: nothing may run on the machine after sysprep.
  provisioner "ansible" {
    playbook_file    = "${path.root}/../roles/sysprep.yml"
    command          = var.ansible_playbook
    user             = "ubuntu"
    use_proxy        = false
    ansible_env_vars = local.ansible_env
    extra_arguments  = ["--extra-vars", "ansible_python_interpreter=/usr/bin/python3"]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = true
    custom_data = {
      image        = var.image_name
      version      = var.image_version
      git_revision = var.git_revision
    }
  }
}
