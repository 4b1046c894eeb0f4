"""Encrypted per-track recordings of the RTP streams as received (docs/recording.md).

- `keys`: the operator's X25519 key pair and the per-recording data key wrapped for it.
- `container`: the file format, sans-I/O: header, sealed chunks, records inside chunks.
- `reader`: verify a file without a key, decrypt it with one; every failure names the chunk.
- `recorder`: the I/O edge: one file per recording, taps on published tracks, caps, errors.
- `manager`: the server's recordings: admin operations, quota, the `recording` notice.
- `depacketize` / `export`: RTP to VP8/Opus frames, remuxed by PyAV without re-encoding.
"""
