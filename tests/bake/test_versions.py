"""What counts as a pinned version, and that an image's own vars win over role defaults."""

from scipioncloud import versions


def test_pins_reads_each_shape_and_skips_unset_or_templated():
    found = versions.pins(
        {
            "nvidia_driver_branch": "580",
            "nvidia_driver_version": "",  # optional exact version, unset
            "cuda_default_version": "{{ cuda_versions | last }}",
            "cuda_versions": ["12.4", "12.6"],
            "scipion_core_packages": {"scipion-em": "3.11.1"},
            "scipion_plugins": [{"name": "scipion-em-relion", "version": "5.0.2", "module": "relion"}],
            "agent_bind": "127.0.0.1:9777",
        }
    )
    assert found == {
        "nvidia_driver_branch": "580",
        "cuda_versions": "12.4 12.6",
        "scipion-em": "3.11.1",
        "scipion-em-relion": "5.0.2",
    }


def test_image_vars_override_role_defaults(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images/x.pkrvars.hcl").write_text('image_version = "1.2.3"\n')
    (tmp_path / "images/x.yml").write_text("scipioncloud_roles: [cuda]\ncuda_versions: ['12.6']\n")
    (tmp_path / "roles/cuda/defaults").mkdir(parents=True)
    (tmp_path / "roles/cuda/defaults/main.yml").write_text(
        "cuda_versions: ['12.4']\ncuda_repo_version: '1'\n"
    )
    assert versions.role_pins_for_image(tmp_path, "x") == {
        "cuda_versions": ("12.6", "images/x.yml"),
        "cuda_repo_version": ("1", "roles/cuda/defaults/main.yml"),
    }
    found = versions.component_versions(tmp_path, "x")
    assert found["cuda_versions"] == "12.6" and found["image_version"] == "1.2.3"
