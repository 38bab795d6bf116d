# Packer vars of the scipion-desktop image (GPU workstation with the browser desktop).
# Layering: packer/variables.pkr.hcl defaults, then this file, then the bake driver's generated file.
image_name          = "scipion-desktop"
image_version       = "0.1.0"
ubuntu_version      = "24.04"
instance_type       = "g4dn.xlarge"
root_volume_size_gb = 60
ansible_vars_file   = "images/scipion-desktop.yml"
verify_gpu          = true
gpu_required        = true
