"""Runtime shared by every service: settings, gRPC server bootstrap, errors and logging."""
