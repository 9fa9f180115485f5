"""The ``dptask`` client: the HTTP API of a running service (``api``) and how its
answers look on a terminal or in a pipe (``render``). The commands themselves are
``service/commands/client.py``."""
