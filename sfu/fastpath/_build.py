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
#define KR_RX_SLOTS ...
#define KR_RX_BYTES ...
#define KR_ADDR_BYTES ...
typedef struct kr_rx kr_rx;
kr_rx *kr_rx_new(void);
void kr_rx_free(kr_rx *rx);
char *kr_rx_data(kr_rx *rx);
char *kr_rx_addrs(kr_rx *rx);
int *kr_rx_lengths(kr_rx *rx);
int *kr_rx_addrlens(kr_rx *rx);
int kr_recv(kr_rx *rx, int fd);
int kr_rx_timestamping(int fd);
long long *kr_rx_stamps(kr_rx *rx);
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

/* The receive side: KR_RX_SLOTS datagrams of up to KR_RX_BYTES (a larger one is truncated and
   reported with length -1), each with its source address as the kernel wrote it. */
#define KR_RX_SLOTS 64
#define KR_RX_BYTES 2048
#define KR_ADDR_BYTES 28
#define KR_RX_CONTROL CMSG_SPACE(sizeof(struct timespec))

typedef struct kr_rx {
    struct mmsghdr msgs[KR_RX_SLOTS];
    struct iovec iov[KR_RX_SLOTS];
    int lengths[KR_RX_SLOTS];
    int addrlens[KR_RX_SLOTS];
    unsigned char addrs[KR_RX_SLOTS][KR_ADDR_BYTES];
    unsigned char data[KR_RX_SLOTS][KR_RX_BYTES];
    /* Receive timestamps (SO_TIMESTAMPNS, sfu/fastpath/receive.py): kr_rx_take_stamps. */
    unsigned char control[KR_RX_SLOTS][KR_RX_CONTROL];
    long long stamps[KR_RX_SLOTS];
} kr_rx;

kr_rx *kr_rx_new(void) {
    kr_rx *rx = calloc(1, sizeof(kr_rx));
    if (rx == NULL) return NULL;
    for (int i = 0; i < KR_RX_SLOTS; i++) {
        rx->iov[i].iov_base = rx->data[i];
        rx->iov[i].iov_len = KR_RX_BYTES;
        rx->msgs[i].msg_hdr.msg_iov = &rx->iov[i];
        rx->msgs[i].msg_hdr.msg_iovlen = 1;
        rx->msgs[i].msg_hdr.msg_name = rx->addrs[i];
        rx->msgs[i].msg_hdr.msg_control = rx->control[i];
    }
    return rx;
}
void kr_rx_free(kr_rx *rx) { free(rx); }
char *kr_rx_data(kr_rx *rx) { return (char *)rx->data; }
char *kr_rx_addrs(kr_rx *rx) { return (char *)rx->addrs; }
int *kr_rx_lengths(kr_rx *rx) { return rx->lengths; }
int *kr_rx_addrlens(kr_rx *rx) { return rx->addrlens; }

/* The kernel's receive time of each datagram (CLOCK_REALTIME, ns; 0 without one): with
   SO_TIMESTAMPNS on the socket (kr_rx_timestamping), the control message recvmmsg returns. */
static void kr_rx_take_stamps(kr_rx *rx, int n) {
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &rx->msgs[i].msg_hdr;
        struct cmsghdr *c = CMSG_FIRSTHDR(h);
        rx->stamps[i] = 0;
        if (c != NULL && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
            struct timespec ts;
            memcpy(&ts, CMSG_DATA(c), sizeof(ts));
            rx->stamps[i] = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
        }
    }
}
long long *kr_rx_stamps(kr_rx *rx) { return rx->stamps; }
int kr_rx_timestamping(int fd) {
    int on = 1;
    return setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof(on)) < 0 ? -errno : 0;
}

/* Receive what the socket holds, up to KR_RX_SLOTS datagrams, without waiting: their number
   (fewer than KR_RX_SLOTS: the socket was empty), or -errno (-EAGAIN: nothing there). */
int kr_recv(kr_rx *rx, int fd) {
    int n;
    for (int i = 0; i < KR_RX_SLOTS; i++) {
        rx->msgs[i].msg_hdr.msg_namelen = KR_ADDR_BYTES;
        rx->msgs[i].msg_hdr.msg_flags = 0;
        rx->msgs[i].msg_hdr.msg_controllen = KR_RX_CONTROL;
    }
    do {
        n = recvmmsg(fd, rx->msgs, KR_RX_SLOTS, MSG_DONTWAIT, NULL);
    } while (n < 0 && errno == EINTR);
    if (n < 0) return -errno;
    for (int i = 0; i < n; i++) {
        struct msghdr *h = &rx->msgs[i].msg_hdr;
        rx->lengths[i] = (h->msg_flags & MSG_TRUNC) ? -1 : (int)rx->msgs[i].msg_len;
        rx->addrlens[i] = (int)h->msg_namelen;
    }
    kr_rx_take_stamps(rx, n);
    return n;
}
"""

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
