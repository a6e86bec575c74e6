"""labq's Textual UI. It talks to the daemon only through scheduler.client."""
