# Plugin pins for current Packer (>= 1.10 ships no plugins). `scipioncloud bake` runs
# `packer init packer/plugins` when the installed Packer supports it. Kept out of packer/ itself because
# Debian's Packer 1.6.6, which the tests use, rejects required_plugins.
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "= 1.3.3"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "= 1.1.2"
    }
  }
}
