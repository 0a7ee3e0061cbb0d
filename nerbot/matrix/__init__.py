"""Everything that talks to the homeserver: the only package importing nio or simplematrixbotlib."""
