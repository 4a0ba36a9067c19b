"""Peer quantizers, each run by its own virtual environment's Python (bench/venvs/<peer>): see bench/peer.py."""
