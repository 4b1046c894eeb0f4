"""cffi build script (API mode) of the batched fan-out: SRTP-protect a batch of RTP packets in
place and send them, each to its own address, in one `sendmmsg` call; and the batched receive:
up to `KR_RX_SLOTS` datagrams of the shared socket in one `recvmmsg` call.

The extension calls libsrtp through a function pointer handed over at run time: the
`srtp_protect` of the libsrtp copy linked inside pylibsrtp's own `_binding` module, the one that
created every session. So no second libsrtp is linked here (two copies on one `srtp_t` would
corrupt it), and the build needs only a C compiler and Python's headers.

Packaging: built at `pip install` (setup.py's `cffi_modules`); else by hand or on first use:
`keyroom build-ext` (sfu/fastpath/loader.py).
"""

from __future__ import annotations

import hashlib
import runpy
from pathlib import Path

from cffi import FFI

MODULE = "sfu.fastpath._fanout"

CDEF = """
#define KR_SLOTS ...
#define KR_SLOT_BYTES ...
typedef int (*kr_protect_fn)(void *session, void *rtp, int *length);
typedef struct kr_batch kr_batch;
kr_batch *kr_batch_new(void);
void kr_batch_free(kr_batch *batch);
int kr_batch_count(kr_batch *batch);
int kr_sockaddr(const char *host, int port, char *out);
int kr_add(kr_batch *batch, void *session, const char *data, int length,
           const char *addr, int addrlen);
int kr_flush(kr_batch *batch, int fd, kr_protect_fn protect, int *protect_failures);
typedef struct kr_copy {
    void *session;
    uint32_t ssrc, ts_offset, last_out_ts;
    uint16_t seq_offset, last_out_seq, first_seq;
    uint64_t packets, octets, sent_packets, sent_bytes, send_errors;
    unsigned char pt_map[128], one_map[16], slot[3], slot_len, mid[17], mid_len, addrlen, addr[28];
    uint16_t floor, pid_offset;
    unsigned char tl0_offset, layered, munge, last_head_len, last_head[6];
    int64_t *tw_next; double *tw_times; uint32_t *tw_sizes; double *budget;
    uint64_t budget_packets, budget_bytes;
    unsigned char over, red_pt, red_from, red_to;
} kr_copy;
typedef struct kr_call {
    kr_batch *batch; kr_copy *copies; int n, start, queued, over; double now;
} kr_call;
int kr_fanout(kr_call *call, const unsigned char *data, int length);
"""

SOURCE = r"""
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

/* sendmmsg takes at most UIO_MAXIOV (1024) messages; a batch is one input's fan-out (or a few
   inputs'), flushed early when full. A slot holds an RTP packet plus libsrtp's trailer. */
#define KR_SLOTS 512
#define KR_SLOT_BYTES 1536
#define KR_TRAILER 144

typedef int (*kr_protect_fn)(void *session, void *rtp, int *length);

typedef struct kr_batch {
    int count;
    void *sessions[KR_SLOTS];
    int lengths[KR_SLOTS];
    struct sockaddr_in6 addrs[KR_SLOTS];
    socklen_t addrlens[KR_SLOTS];
    struct mmsghdr msgs[KR_SLOTS];
    struct iovec iov[KR_SLOTS];
    unsigned char data[KR_SLOTS][KR_SLOT_BYTES];
} kr_batch;

kr_batch *kr_batch_new(void) { return calloc(1, sizeof(kr_batch)); }
void kr_batch_free(kr_batch *batch) { free(batch); }
int kr_batch_count(kr_batch *batch) { return batch->count; }

/* A socket address for host:port (IPv4 or IPv6 text), written to out (28 bytes); its length,
   or 0 if host is not an address. */
int kr_sockaddr(const char *host, int port, char *out) {
    struct sockaddr_in v4;
    struct sockaddr_in6 v6;
    memset(&v4, 0, sizeof v4);
    memset(&v6, 0, sizeof v6);
    if (inet_pton(AF_INET, host, &v4.sin_addr) == 1) {
        v4.sin_family = AF_INET;
        v4.sin_port = htons((uint16_t)port);
        memcpy(out, &v4, sizeof v4);
        return sizeof v4;
    }
    if (inet_pton(AF_INET6, host, &v6.sin6_addr) == 1) {
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((uint16_t)port);
        memcpy(out, &v6, sizeof v6);
        return sizeof v6;
    }
    return 0;
}

/* Queue one plaintext RTP packet for session and address: 0, or -1 when the batch is full
   (flush, then add again), -2 when the packet is too large for a slot. */
int kr_add(kr_batch *batch, void *session, const char *data, int length,
           const char *addr, int addrlen) {
    int i = batch->count;
    if (i >= KR_SLOTS) return -1;
    if (length < 0 || length > KR_SLOT_BYTES - KR_TRAILER || addrlen > (int)sizeof(batch->addrs[0]))
        return -2;
    memcpy(batch->data[i], data, (size_t)length);
    memcpy(&batch->addrs[i], addr, (size_t)addrlen);
    batch->addrlens[i] = (socklen_t)addrlen;
    batch->lengths[i] = length;
    batch->sessions[i] = session;
    batch->count = i + 1;
    return 0;
}

/* Protect every queued packet in place and send them with sendmmsg; returns the datagrams the
   kernel took. A packet libsrtp refuses is skipped and counted in *protect_failures; on a full
   socket buffer (EAGAIN) the rest are dropped, as a UDP socket would. The batch is emptied. */
int kr_flush(kr_batch *batch, int fd, kr_protect_fn protect, int *protect_failures) {
    int n = 0, done = 0, sent = 0, failures = 0;
    for (int i = 0; i < batch->count; i++) {
        int length = batch->lengths[i];
        if (protect(batch->sessions[i], batch->data[i], &length) != 0) {
            failures++;
            continue;
        }
        batch->iov[n].iov_base = batch->data[i];
        batch->iov[n].iov_len = (size_t)length;
        memset(&batch->msgs[n].msg_hdr, 0, sizeof(struct msghdr));
        batch->msgs[n].msg_hdr.msg_name = &batch->addrs[i];
        batch->msgs[n].msg_hdr.msg_namelen = batch->addrlens[i];
        batch->msgs[n].msg_hdr.msg_iov = &batch->iov[n];
        batch->msgs[n].msg_hdr.msg_iovlen = 1;
        n++;
    }
    batch->count = 0;
    *protect_failures = failures;
    while (done < n) {
        int r = sendmmsg(fd, batch->msgs + done, (unsigned int)(n - done), MSG_DONTWAIT);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) break;
            done++; /* this destination refused it (e.g. unreachable): skip it, send the rest */
            continue;
        }
        done += r;
        sent += r;
    }
    return sent;
}

/* One down-track in its steady state (sfu/fastpath/steady.py): what RtpRewriter.rewrite and
   RtpSink.send do per copy, as data. Counters are summed here and read back by Python. */
typedef struct kr_copy {
    void *session;              /* the subscriber's srtp_t */
    uint32_t ssrc, ts_offset, last_out_ts;
    uint16_t seq_offset, last_out_seq;
    uint16_t first_seq;         /* the oldest sequence number sent since Python set it */
    uint64_t packets, octets;   /* the rewriter's: packets, payload octets (sender reports) */
    uint64_t sent_packets, sent_bytes, send_errors;  /* the sink's, since Python last read them */
    unsigned char pt_map[128];  /* input payload type -> output one, 0xFF: not mapped */
    unsigned char one_map[16];  /* one-byte element id -> output id << 4, 0: dropped */
    unsigned char slot[3];      /* transport-cc element (first), slot_len 0 or 3 */
    unsigned char slot_len;
    unsigned char mid[17];      /* the MID element, one-byte form */
    unsigned char mid_len;
    unsigned char addrlen;
    unsigned char addr[28];
    /* A simulcast down-track settled on its layer (sfu/layerswitch.py): input older than the
       switch point `floor` is refused (the floor follows the stream), and the VP8 PictureID
       and TL0PICIDX are renumbered by the offsets of its last switch (sfu/vp8.py) when `munge`.
       last_head: the first bytes of the last copy's payload (+1 in last_head_len, 0: none since
       Python read it), where the next switch continues the numbering. */
    uint16_t floor, pid_offset;
    unsigned char tl0_offset, layered, munge, last_head_len;
    unsigned char last_head[6];
    /* Transport-wide congestion control (sfu/twcc.py TransportSequence, shared by the
       subscriber's down-tracks): the next sequence number, stamped in the slot (the first
       element), and the send history (time, size) by sequence number & KR_TW_MASK; NULL:
       not negotiated. */
    int64_t *tw_next;
    double *tw_times;
    uint32_t *tw_sizes;
    /* The subscriber's video send budget (sfu/sendbudget.py SendBudget.cell), NULL: none. A
       copy that does not fit, or would overtake what the pacer holds, is not made (`over`
       set): Python paces it. What fitted is counted for the budget's offered and passed. */
    double *budget;
    uint64_t budget_packets, budget_bytes;
    unsigned char over;
    /* RED audio (sfu/redtrack.py): an input of payload type red_pt has its block headers'
       red_from (the publisher's Opus) renamed red_to (the subscriber's); equal: as it came. */
    unsigned char red_pt, red_from, red_to;
} kr_copy;

#define KR_TW_MASK 8191 /* sfu/twcc.py HISTORY - 1 */
#define KR_ROUNDING 1e-6 /* sfu/sendbudget.py _ROUNDING */

/* Payload rewrites of a copy (sfu/fastpath/_payload_source.py). */
static void kr_vp8(unsigned char *p, int len, unsigned pid_offset, unsigned tl0_offset);
static void kr_red(unsigned char *p, int len, unsigned from, unsigned to);

/* The kept one-byte elements of [pos, end) under one_map, as RtpRewriter's fast path; their
   length, or -1 when they exceed `room`. */
static int kr_elements(const unsigned char *data, int pos, int end, const unsigned char *one_map,
                       unsigned char *out, int room) {
    int n = 0;
    while (pos < end) {
        int b = data[pos];
        if (b == 0) { pos++; continue; }
        if (b >= 0xF0) break; /* id 15: stop processing the block (RFC 8285) */
        int start = pos + 1;
        pos = start + (b & 0x0F) + 1;
        if (pos > end) break;
        int id = one_map[b >> 4];
        if (id) {
            int size = pos - start;
            if (n + 1 + size > room) return -1;
            out[n++] = (unsigned char)(id | (b & 0x0F));
            memcpy(out + n, data + start, (size_t)size);
            n += size;
        }
    }
    return n;
}

static void kr_put16(unsigned char *p, unsigned v) {
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}
static void kr_put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24); p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8); p[3] = (unsigned char)v;
}

/* Queue the copies of one plaintext RTP packet (without extension block or with a one-byte
   one: Python keeps any other) for copies[start..n): each rewritten as RtpRewriter.rewrite
   would, counted as RtpSink.send would. A payload type a copy does not map is skipped; a copy
   too large for a slot is counted in its send_errors. Returns n, or the index of the first copy
   not queued because the batch is full (flush, then call again from there); -1 for a header
   that does not parse. *queued is raised by the copies queued, *over by those over their
   budget. */
static int kr_copies(kr_batch *batch, kr_copy *copies, int start, int n,
                     const unsigned char *data, int length, double now, int *queued, int *over) {
    if (length < 12 || data[0] >> 6 != 2) return -1;
    int b0 = data[0], pos = 12 + 4 * (b0 & 0x0F), ext_start = pos, ext_end = pos;
    if (pos > length) return -1;
    if (b0 & 0x10) {
        if (pos + 4 > length || data[pos] != 0xBE || data[pos + 1] != 0xDE) return -1;
        ext_start = pos + 4;
        ext_end = pos = ext_start + 4 * ((data[pos + 2] << 8) | data[pos + 3]);
        if (pos > length) return -1;
    }
    int payload_end = length;
    if (b0 & 0x20) {
        int pad = data[length - 1];
        if (pad == 0 || pad > length - pos) return -1;
        payload_end = length - pad;
    }
    int pt = data[1] & 0x7F, marker = data[1] & 0x80, tail = length - pos;
    uint16_t in_seq = (uint16_t)((data[2] << 8) | data[3]);
    uint32_t in_ts = ((uint32_t)data[4] << 24) | ((uint32_t)data[5] << 16)
                     | ((uint32_t)data[6] << 8) | data[7];
    unsigned char b0_out = payload_end < length ? 0xA0 : 0x80; /* keep P: the padding is copied */
    unsigned char elements[KR_SLOT_BYTES];
    const unsigned char *remapped = NULL; /* the one_map `elements` were made with */
    int el_len = 0, limit = KR_SLOT_BYTES - KR_TRAILER;
    for (int i = start; i < n; i++) {
        kr_copy *c = &copies[i];
        if (batch->count >= KR_SLOTS) return i;
        if (c->layered) { /* LayerSwitch.admit for the current layer */
            uint16_t ahead = (uint16_t)(in_seq - c->floor);
            if (ahead >= 0x8000) continue;
            if (ahead > 0x4000) c->floor = (uint16_t)(in_seq - 0x2000);
        }
        int out_pt = c->pt_map[pt];
        if (out_pt == 0xFF) continue;
        if (remapped == NULL || memcmp(remapped, c->one_map, 16) != 0) {
            el_len = kr_elements(data, ext_start, ext_end, c->one_map, elements, limit);
            remapped = c->one_map;
        }
        int body = c->slot_len + el_len + c->mid_len;
        body += (4 - (body & 3)) & 3;
        int head = body ? 16 + body : 12;
        double *b = c->budget; /* [tokens, depth, rate (-1: none), last refill, queued] */
        if (b != NULL && b[4] > 0) { /* the pacer holds packets: this one waits behind them */
            c->over = 1;
            (*over)++;
            continue;
        }
        if (b != NULL && b[2] >= 0 && el_len >= 0) { /* Pacer.offer -> SendBudget.take */
            double size = head + tail;
            if (now > b[3]) {
                double tokens = b[0] + (now - b[3]) * b[2];
                b[0] = tokens < b[1] ? tokens : b[1];
                b[3] = now;
            }
            if (b[0] < (size < b[1] ? size : b[1]) - KR_ROUNDING) {
                c->over = 1;
                (*over)++;
                continue;
            }
            b[0] -= size;
            c->budget_packets++;
            c->budget_bytes += (uint64_t)(head + tail);
        }
        uint16_t seq = (uint16_t)(in_seq + c->seq_offset);
        uint32_t ts = in_ts + c->ts_offset;
        if ((uint16_t)(seq - c->last_out_seq) < 0x8000) { /* only a newer packet moves it */
            c->last_out_seq = seq;
            c->last_out_ts = ts;
        } else if ((uint16_t)(c->first_seq - seq) < 0x8000) {
            c->first_seq = seq; /* late input: rebuilt for a NACK too (steady.py's Replay) */
        }
        c->packets++;
        c->octets += (uint64_t)(payload_end - pos);
        if (el_len < 0 || head + tail > limit) {
            if (el_len >= 0 && c->tw_next != NULL && c->slot_len) { /* stamped, then refused */
                int64_t t = (*c->tw_next)++;
                c->tw_times[t & KR_TW_MASK] = now;
                c->tw_sizes[t & KR_TW_MASK] = (uint32_t)(head + tail);
            }
            c->send_errors++;
            continue;
        }
        int k = batch->count;
        unsigned char *o = batch->data[k];
        o[0] = body ? (unsigned char)(b0_out | 0x10) : b0_out;
        o[1] = (unsigned char)(marker | out_pt);
        kr_put16(o + 2, seq);
        kr_put32(o + 4, ts);
        kr_put32(o + 8, c->ssrc);
        if (body) {
            unsigned char *b = o + 16;
            o[12] = 0xBE;
            o[13] = 0xDE;
            kr_put16(o + 14, (unsigned)(body >> 2));
            memcpy(b, c->slot, c->slot_len);
            b += c->slot_len;
            memcpy(b, elements, (size_t)el_len);
            b += el_len;
            memcpy(b, c->mid, c->mid_len);
            b += c->mid_len;
            memset(b, 0, (size_t)(o + head - b));
            if (c->tw_next != NULL && c->slot_len) { /* TransportSequence.stamp */
                int64_t t = (*c->tw_next)++;
                kr_put16(o + 17, (unsigned)(t & 0xFFFF));
                c->tw_times[t & KR_TW_MASK] = now;
                c->tw_sizes[t & KR_TW_MASK] = (uint32_t)(head + tail);
            }
        }
        memcpy(o + head, data + pos, (size_t)tail);
        if (c->munge) kr_vp8(o + head, payload_end - pos, c->pid_offset, c->tl0_offset);
        if (c->red_from != c->red_to && pt == c->red_pt)
            kr_red(o + head, payload_end - pos, c->red_from, c->red_to);
        if (c->layered) {
            int kept = payload_end - pos < 6 ? payload_end - pos : 6;
            memcpy(c->last_head, o + head, (size_t)kept);
            c->last_head_len = (unsigned char)(kept + 1);
        }
        memcpy(&batch->addrs[k], c->addr, c->addrlen);
        batch->addrlens[k] = c->addrlen;
        batch->lengths[k] = head + tail;
        batch->sessions[k] = c->session;
        batch->count = k + 1;
        c->sent_packets++;
        c->sent_bytes += (uint64_t)(head + tail);
        (*queued)++;
    }
    return n;
}

typedef struct kr_call {
    kr_batch *batch;
    kr_copy *copies;
    int n;           /* copies[0..n) */
    int start;       /* the first copy to queue: 0, or where a full batch stopped the last call */
    int queued;      /* copies queued since the call from copy 0 */
    int over;        /* copies over their send budget, since then */
    double now;      /* the send time (twcc.send_clock), when a copy stamps or has a budget */
} kr_call;

/* One input packet to every copy of `call` (one call per input: its arguments in a struct
   Python keeps). Returns the copies queued when all were made and none was over its budget;
   -2 when the batch is full (flush, then call again: it goes on from call->start); -3 when
   done with copies over their budget (call->queued and call->over say how many); -1 for a
   header that does not parse. */
int kr_fanout(kr_call *call, const unsigned char *data, int length) {
    if (call->start == 0) call->queued = call->over = 0;
    int i = kr_copies(call->batch, call->copies, call->start, call->n, data, length, call->now,
                      &call->queued, &call->over);
    call->start = i >= 0 && i < call->n ? i : 0;
    if (i < 0 || i < call->n) return i < 0 ? -1 : -2;
    return call->over ? -3 : call->queued;
}
"""

# The payload rewrites and the receive side's C, sibling files (read by path: see their
# docstrings).
PAYLOAD_FILE = Path(__file__).with_name("_payload_source.py")
RECEIVE_FILE = Path(__file__).with_name("_receive_source.py")
SOURCE += runpy.run_path(str(PAYLOAD_FILE))["SOURCE"]
_receive = runpy.run_path(str(RECEIVE_FILE))
CDEF += _receive["CDEF"]
SOURCE += _receive["SOURCE"]

# Names the C code a module was built from: an extension installed by an older `pip install`
# whose source has changed since is not used (sfu/fastpath/loader.py).
SOURCE_KEY = hashlib.sha256((CDEF + SOURCE).encode()).hexdigest()[:16]

ffibuilder = FFI()
ffibuilder.cdef(CDEF + "const char *kr_source_key(void);\n")
ffibuilder.set_source(
    MODULE,
    SOURCE + f'const char *kr_source_key(void) {{ return "{SOURCE_KEY}"; }}\n',
    extra_compile_args=["-O2"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
