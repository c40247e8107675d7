"""`node0`: one entry point that dispatches subcommands (placeholder, filled by the daemon work)."""
