"""Contextualization of deployed VMs (built on the scheduling core; see issue 5)."""
