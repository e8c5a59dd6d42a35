"""Exit statuses that mean something to the launcher (services/supervisor.py)."""

# A service that ended itself because nobody used it (idle_shutdown_seconds): the launcher stops
# the mesh. Any other exit, a clean one after a stray SIGTERM included, is restarted.
IDLE_SHUTDOWN_EXIT_CODE = 75  # EX_TEMPFAIL
