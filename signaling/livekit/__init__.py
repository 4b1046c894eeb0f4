"""LiveKit's signaling protocol over keyroom's session logic (docs/livekit.md).

`wire` turns LiveKit's protobuf frames into keyroom's typed messages and keyroom's frames into
LiveKit's; `edge` runs a `/rtc` socket that speaks it; `twirp` is LiveKit's RoomService over
keyroom's admin logic; `datapackets` translates data channel messages.
"""
