#!/bin/sh
# Reboot the build instance when the driver install asked for one, so the verification that follows runs
# against the new kernel module. Packer expects the disconnect (expect_disconnect) and reconnects.
set -eu
# sd_booted(): only a root that systemd booted can be rebooted (not a chroot or container build)
if [ ! -d /run/systemd/system ] || systemd-detect-virt --quiet --chroot 2>/dev/null; then
  echo "reboot-if-required: systemd did not boot this root (chroot?), never rebooting from here"
  exit 0
fi
if [ -e /var/run/reboot-required ] || [ -e /run/scipioncloud/reboot-required ]; then
  echo "reboot-if-required: rebooting ($(cat /var/run/reboot-required.pkgs 2>/dev/null | tr '\n' ' '))"
  rm -f /run/scipioncloud/reboot-required
  systemctl reboot
  sleep 300 # the reboot ends this session; Packer treats the disconnect as success
fi
echo "reboot-if-required: no reboot needed"
