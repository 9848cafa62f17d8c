"""Modules of bench/run (the entry point): common helpers, building, the TCP servers and their
measurements, the UDP part, and the report."""
