"""Running as a service: logs, systemd notifications and the watchdog, the health listener, metrics."""
