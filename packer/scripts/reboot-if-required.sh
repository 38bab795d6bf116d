#!/bin/sh
# Reboot the build instance when the driver install asked for one, so the verification that follows runs
# against the new kernel module. Packer expects the disconnect (expect_disconnect) and reconnects.
set -eu
if systemd-detect-virt --quiet --chroot 2>/dev/null; then
  echo "reboot-if-required: running in a chroot, never rebooting from here"
  exit 0
fi
if [ -e /var/run/reboot-required ] || [ -e /run/scipioncloud/reboot-required ]; then
  echo "reboot-if-required: rebooting ($(cat /var/run/reboot-required.pkgs 2>/dev/null | tr '\n' ' '))"
  rm -f /run/scipioncloud/reboot-required
  systemctl reboot
  sleep 300 # the reboot ends this session; Packer treats the disconnect as success
fi
echo "reboot-if-required: no reboot needed"
