"""Many keyroom nodes sharing one Redis (docs/cluster.md): registry, placement, shared access
control, the admin bus. Nothing here runs without `[cluster] redis_url`."""
