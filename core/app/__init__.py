"""What the command line and the dashboard need: the CLI, its console output, and the
services the pages call."""
