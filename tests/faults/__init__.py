"""Faults injected while work is under way (real servers killed, restarted or filled mid-command)."""
