"""Several cores for one big room (`[rtc] fanout_workers`): subscribers' down-tracks forwarded by
worker processes fed over Unix sockets (docs/architecture.md, "Fan-out workers")."""
