"""The Ansible handoff is real: the rendered context drives an ``ansible-pull`` of a
local git repository whose role writes the VM's roles and hostname into a file.

What cloud-init would do on first boot is done here by hand, from the rendered seed
only: the ``write_files`` entry with the context is written (under a temporary
directory instead of ``/etc``), and ``ansible-pull`` runs with the ``url``,
``checkout`` and ``playbook_name`` of the seed's ``ansible.pull`` (the arguments
cloud-init's ``cc_ansible`` passes), plus what a sandboxed test needs: a working
directory, localhost as the inventory, and where the context file is.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from contextualization.model import (
    AnsibleHandoff,
    ContextSpec,
    RoleGroup,
    SiteContext,
    vm_contexts,
)
from contextualization.render import CONTEXT_FILE, user_data

ANSIBLE_PULL = Path(sys.executable).with_name("ansible-pull")

pytestmark = pytest.mark.skipif(
    not ANSIBLE_PULL.exists() or shutil.which("git") is None,
    reason="ansible-core (the test extra) or git is not installed")

PLAYBOOK = """\
- hosts: localhost
  connection: local
  gather_facts: false
  roles:
    - wsched_context
"""
ROLE_TASKS = """\
- name: Read the context wsched wrote on first boot
  ansible.builtin.set_fact:
    wsched: "{{ lookup('ansible.builtin.file', context_file) | from_json }}"
- name: Record this VM's cluster roles and hostname
  ansible.builtin.copy:
    dest: "{{ out_file }}"
    content: >-
      hostname={{ wsched.hostname }}
      provides={{ wsched.provides | join(',') }}
      requires={{ wsched.requires | join(',') }}
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"})


def config_repository(root: Path) -> Path:
    repo = root / "cm"
    (repo / "roles" / "wsched_context" / "tasks").mkdir(parents=True)
    (repo / "site.yml").write_text(PLAYBOOK)
    (repo / "roles" / "wsched_context" / "tasks" / "main.yml").write_text(ROLE_TASKS)
    git(repo, "init", "-q", "-b", "production")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "configuration")
    return repo


@pytest.mark.parametrize("index", [0, 1])
def test_ansible_pull_applies_the_role_the_context_asks_for(tmp_path: Path,
                                                             index: int) -> None:
    repo = config_repository(tmp_path)
    handoff = AnsibleHandoff(url=f"file://{repo}", playbook="site.yml", branch="production")
    spec = ContextSpec((), (RoleGroup((0,), ("nfs-server",)),
                            RoleGroup((1,), (), ("nfs-server",))), "", handoff)
    spec.validate(2)
    site = SiteContext.from_mapping({"network": "10.30.0.0/24", "gateway": "10.30.0.1",
                                     "domain": "cluster.test"})
    vm = vm_contexts(7, spec, site, list(site.pool())[:2])[index]

    # first boot, from the seed alone
    text = user_data(vm)
    assert text.startswith("#cloud-config\n")
    seed = yaml.safe_load(text)
    context = next(f for f in seed["write_files"] if f["path"] == CONTEXT_FILE)
    context_file = tmp_path / "context.json"
    context_file.write_text(context["content"])
    pull = seed["ansible"]["pull"]
    out = tmp_path / "applied.txt"
    proc = subprocess.run(
        [str(ANSIBLE_PULL), "--url", pull["url"], "--checkout", pull["checkout"],
         "--directory", str(tmp_path / "checkout"), "--inventory", "localhost,",
         "--extra-vars", json.dumps({"context_file": str(context_file),
                                     "out_file": str(out)}),
         pull["playbook_name"]],
        capture_output=True, text=True, timeout=300,
        # the modules run with this interpreter (discovery would find a pyenv shim)
        env={**os.environ, "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
             "ANSIBLE_LOCAL_TEMP": str(tmp_path / "tmp"),
             "ANSIBLE_HOME": str(tmp_path / "ansible"), "ANSIBLE_NOCOLOR": "1"})
    assert proc.returncode == 0, proc.stdout + proc.stderr

    # instance ids (and hostnames) number VMs from 01
    expected = {0: "hostname=lease-7-vm-01 provides=nfs-server requires=",
                1: "hostname=lease-7-vm-02 provides= requires=nfs-server"}
    assert out.read_text() == expected[index]
