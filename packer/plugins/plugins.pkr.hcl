# Plugin pins for current Packer (>= 1.10 ships no plugins). `scipioncloud bake` runs
# `packer init packer/plugins` when the installed Packer supports it, with PACKER_PLUGIN_PATH set to a folder
# of this pin set only (scipioncloud/bake.py plugin_dir): Packer loads the highest installed version of a
# plugin, so a shared plugin folder would not enforce these pins. Kept out of packer/ itself because
# Debian's Packer 1.6.6, which the tests use, rejects required_plugins.
# Versions: the newest releases listed on releases.hashicorp.com/packer-plugin-amazon and
# /packer-plugin-ansible (checked 2026-11-30).
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = "= 1.8.0"
    }
    ansible = {
      source  = "github.com/hashicorp/ansible"
      version = "= 1.1.4"
    }
  }
}
