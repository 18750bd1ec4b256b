"""The pieces of one proxied call that decide, kept apart from Tornado so
each can be tested directly: whether a call may go (admission), what became
of it (outcome), and what it leaves behind (record). The Tornado glue that
runs them is kylon/handlers/proxy.py."""
