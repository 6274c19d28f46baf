"""xenray's experiment layer: the Cluster API, the toolstack CLI, xl.cfg parsing, benchmarks.

Importing it has no side effect: the processes that start or join a Ray cluster call
:func:`actors.transport.naming.ray_environment` first (DESIGN.md, ray-notes.md).
"""
