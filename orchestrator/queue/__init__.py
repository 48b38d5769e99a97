"""The durable Redis job queue: its wire schema, client and server."""
