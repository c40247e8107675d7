"""The swarm authority: keys, credentials, and the checks every service applies."""
