"""The bake driver's own logic, without Packer or AWS: images, Packer variables, Packer's machine-readable
output, the versions table."""

from __future__ import annotations

import pytest

from scipioncloud import bake, versions
from tests.conftest import REPO


def test_known_images_and_unknown_image_lists_them():
    assert bake.known_images(REPO) == ["scipion-compute", "scipion-desktop"]
    image = bake.find_image(REPO, "scipion-compute")
    assert image.ansible_vars == REPO / "images/scipion-compute.yml"
    with pytest.raises(bake.BakeError, match="known images: scipion-compute, scipion-desktop"):
        bake.find_image(REPO, "scipion-dekstop")


def test_every_image_has_both_files_and_only_roles_site_yml_applies():
    site = (REPO / "roles/site.yml").read_text()
    for name in bake.known_images(REPO):
        assert (REPO / "images" / f"{name}.yml").exists()
        roles = versions.image_roles(REPO, name)
        assert roles, name
        for role in roles:
            assert f"role: {role}," in site, f"{name} lists {role}, which site.yml does not apply"
            assert (REPO / "roles" / role / "README.md").exists()
    assert "role: sysprep" not in site  # sysprep only before a snapshot, never on a kept machine


def test_hcl_values_for_packer_vars():
    assert bake.hcl("eu-west-1") == "eu-west-1"
    assert bake.hcl(["us-east-1", "us-west-2"]) == '["us-east-1", "us-west-2"]'
    assert bake.hcl({"scipioncloud": "0.1.0"}) == '{"scipioncloud" = "0.1.0"}'
    assert bake.hcl(False) == "false" and bake.hcl(22) == "22"


def test_parse_vars_refuses_malformed_pairs():
    assert bake.parse_vars(("ssh_port=2222", "x=a=b")) == {"ssh_port": "2222", "x": "a=b"}
    with pytest.raises(bake.BakeError, match="NAME=VALUE"):
        bake.parse_vars(("ssh_port",))
    with pytest.raises(bake.BakeError, match="NAME=VALUE"):
        bake.parse_vars(("Bad-Name=1",))


def test_packer_output_logs_text_and_collects_amis(tmp_path):
    import os

    output = bake.PackerOutput(tmp_path / "packer.log", show=False)
    lines = [
        "1700000000,,ui,say,==> amazon-ebs.ubuntu: Creating AMI scipion%!(PACKER_COMMA) tagged",
        "1700000001,,ui,error,Build 'amazon-ebs.ubuntu' errored: boom",
        "1700000002,amazon-ebs.ubuntu,artifact,0,id,eu-west-1:ami-0a%!(PACKER_COMMA)us-east-1:ami-0b",
    ]
    os.write(output.write_fd, ("\n".join(lines) + "\n").encode())
    output.close()
    assert output.amis() == {"eu-west-1": "ami-0a", "us-east-1": "ami-0b"}
    assert output.errors == ["Build 'amazon-ebs.ubuntu' errored: boom"]
    log = (tmp_path / "packer.log").read_text()
    assert "==> amazon-ebs.ubuntu: Creating AMI scipion, tagged\n" in log
    assert "artifact,0,id" in log


def test_versions_table_in_docs_is_current():
    assert (REPO / "docs/versions.md").read_text() == versions.markdown_table(REPO), (
        "docs/versions.md is stale: run `python -m scipioncloud.versions > docs/versions.md`"
    )


def test_component_versions_come_from_image_and_role_defaults(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/x.pkrvars.hcl").write_text('image_name = "x"\nubuntu_version = "24.04"\n')
    (tmp_path / "images/x.yml").write_text("scipioncloud_roles: [gpu]\n")
    (tmp_path / "roles/gpu/defaults").mkdir(parents=True)
    (tmp_path / "roles/gpu/defaults/main.yml").write_text(
        'gpu_driver_version: "550.127"\ngpu_path: /x\ngpu_cuda_version: "{{ other }}"\n'
    )
    found = versions.component_versions(tmp_path, "x")
    assert found["ubuntu_version"] == "24.04"
    assert found["gpu_driver_version"] == "550.127"
    assert "gpu_path" not in found and "gpu_cuda_version" not in found
    assert "| gpu_driver_version | 550.127 | roles/gpu/defaults/main.yml |" in versions.markdown_table(
        tmp_path
    )
