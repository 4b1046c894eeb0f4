"""The C source of the payload rewrites of a compiled copy (kr_copies, sfu/fastpath/_build.py):
VP8 renumbering after a simulcast switch and RED block headers retargeted, part of the extension
_build.py builds, kept apart so that each file stays readable. A plain string, loaded by path
(cffi runs _build.py as a script at `pip install`, where `sfu` is not importable)."""

SOURCE = r"""
/* Renumber the VP8 descriptor at p[0..len) as sfu/vp8.py `renumber` does: nothing when it is
   truncated or carries neither field. */
static void kr_vp8(unsigned char *p, int len, unsigned pid_offset, unsigned tl0_offset) {
    if (len < 2 || !(p[0] & 0x80)) return;
    int ext = p[1], pos = 2, pid_pos = -1, tl0_pos = -1, long_pid = 0;
    if (ext & 0x80) {
        if (pos >= len) return;
        pid_pos = pos;
        long_pid = p[pos] & 0x80;
        pos += long_pid ? 2 : 1;
        if (pos > len) return;
    }
    if (ext & 0x40) {
        if (pos >= len) return;
        tl0_pos = pos;
    }
    if (pid_pos >= 0 && long_pid) {
        unsigned pid = ((unsigned)(p[pid_pos] & 0x7F) << 8 | p[pid_pos + 1]) + pid_offset;
        p[pid_pos] = (unsigned char)(0x80 | ((pid >> 8) & 0x7F));
        p[pid_pos + 1] = (unsigned char)pid;
    } else if (pid_pos >= 0) {
        p[pid_pos] = (unsigned char)((p[pid_pos] + pid_offset) & 0x7F);
    }
    if (tl0_pos >= 0) p[tl0_pos] = (unsigned char)(p[tl0_pos] + tl0_offset);
}

/* Rename the payload type `from` to `to` in the block headers of the RED payload at p[0..len)
   (RFC 2198), as sfu/red.py `retarget` does: 4-byte headers while F is set, then the primary's
   1-byte header. The payload was read as valid RED before (sfu/redtrack.py). */
static void kr_red(unsigned char *p, int len, unsigned from, unsigned to) {
    for (int i = 0; i < len; i += 4) {
        unsigned char h = p[i];
        if ((h & 0x7F) == from) p[i] = (unsigned char)((h & 0x80) | to);
        if (!(h & 0x80)) return;
    }
}
"""
