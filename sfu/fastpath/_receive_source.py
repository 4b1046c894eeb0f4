"""The C source of the batched receive (`recvmmsg`), part of the extension that
sfu/fastpath/_build.py builds: kept apart so that each file stays readable. Plain strings, loaded
by path (cffi runs _build.py as a script at `pip install`, where `sfu` is not importable)."""

CDEF = """
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
