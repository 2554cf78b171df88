/* Batched UDP over IPv4: sendmmsg/recvmmsg for the sealed UDP network.
 *
 * Deno's own datagram API costs one call per packet; these move a whole
 * batch per FFI call. Sends never block (MSG_DONTWAIT): a full socket
 * buffer means the rest of the batch is reported unsent, and the caller's
 * retransmission recovers it. Receives wait in poll() with a timeout so a
 * worker thread can block here and still notice it should stop. */
#include "blackrock.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Largest batch handled by one system call; longer batches loop. Words per
 * packet in the send descriptors and receive metadata (see below). */
enum { BR_MMSG_CHUNK = 64, BR_UDP_SEND_WORDS = 4, BR_UDP_RECV_WORDS = 4 };

static void set_buffer(int fd, int opt, int force_opt, uint32_t bytes) {
    if (bytes == 0) return;
    int value = (int)(bytes > 0x7fffffff ? 0x7fffffff : bytes);
    /* The forced variant passes net.core.*mem_max when privileged; the
     * plain one is the fallback. Neither failing is fatal: the default
     * buffer only means more drops under bursts. */
    if (setsockopt(fd, SOL_SOCKET, force_opt, &value, sizeof value) != 0)
        (void)setsockopt(fd, SOL_SOCKET, opt, &value, sizeof value);
}

int32_t br_udp_open(uint32_t ip, uint32_t port, uint32_t rcvbuf, uint32_t sndbuf) {
    if (port > 65535) return -EINVAL;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    set_buffer(fd, SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf);
    set_buffer(fd, SO_SNDBUF, SO_SNDBUFFORCE, sndbuf);
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(ip);
    addr.sin_port = htons((uint16_t)port);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

/* Sets the kernel buffer sizes of a socket opened elsewhere (Deno's own
 * datagram socket); 0 leaves a size as it is. */
int32_t br_udp_tune(int32_t fd, uint32_t rcvbuf, uint32_t sndbuf) {
    if (fd < 0) return -EBADF;
    set_buffer(fd, SO_RCVBUF, SO_RCVBUFFORCE, rcvbuf);
    set_buffer(fd, SO_SNDBUF, SO_SNDBUFFORCE, sndbuf);
    return 0;
}

static int is_bound_udp4(int fd, uint32_t ip, uint32_t port) {
    int type = 0;
    socklen_t type_len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_len) != 0 || type != SOCK_DGRAM)
        return 0;
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0 || len != sizeof addr) return 0;
    return addr.sin_family == AF_INET && ntohl(addr.sin_addr.s_addr) == ip &&
           ntohs(addr.sin_port) == port;
}

/* The descriptor of this process's IPv4 UDP socket bound to ip:port, so
 * batches can be sent on a socket the runtime opened (and receives through
 * its event loop). Two sockets cannot share a bound address without
 * SO_REUSEPORT, so the match is unique. Returns -ENOENT when none is. */
int32_t br_udp_find(uint32_t ip, uint32_t port) {
    DIR *dir = opendir("/proc/self/fd");
    if (dir == NULL) return -errno;
    int found = -ENOENT;
    int own = dirfd(dir);
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        char *end = NULL;
        long fd = strtol(entry->d_name, &end, 10);
        if (end == entry->d_name || *end != '\0' || fd < 0 || fd > 0x7fffffff || fd == own)
            continue;
        if (is_bound_udp4((int)fd, ip, port)) {
            found = (int)fd;
            break;
        }
    }
    if (closedir(dir) != 0 && found < 0) return -errno;
    return found;
}

/* The port the socket is bound to (useful after binding port 0). */
int32_t br_udp_local_port(int32_t fd) {
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) != 0) return -errno;
    return ntohs(addr.sin_port);
}

int32_t br_udp_close(int32_t fd) { return close(fd) == 0 ? 0 : -errno; }

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103 /* linux/udp.h; not in every libc's netinet/udp.h */
#endif

/* Generic segmentation offload (UDP_SEGMENT, Linux 4.18): a run of equal
 * packets to one address, laid out back to back, goes down the stack as
 * one datagram the kernel cuts up late, saving the per-packet work of the
 * output path. At most 64 segments and 64 KiB a run. Cleared for good the
 * first time the kernel refuses it. */
enum { BR_GSO_MAX_SEGMENTS = 64, BR_GSO_MAX_BYTES = 65000 };
static int gso_enabled = 1;

static int gso_refused(int err) {
    return err == EIO || err == EINVAL || err == ENOPROTOOPT || err == EOPNOTSUPP;
}

/* How many packets from index first form one run that can go as a single
 * segmented datagram (1 when none can). */
static uint32_t gso_run(const uint32_t *desc, uint32_t first, uint32_t count) {
    const uint32_t *d = desc + (uint64_t)first * BR_UDP_SEND_WORDS;
    uint32_t segment = d[1], total = d[1], n = 1;
    if (!gso_enabled) return 1;
    while (first + n < count && n < BR_GSO_MAX_SEGMENTS) {
        const uint32_t *prev = desc + (uint64_t)(first + n - 1) * BR_UDP_SEND_WORDS;
        const uint32_t *next = prev + BR_UDP_SEND_WORDS;
        /* Only the last segment may be shorter. */
        if (prev[1] != segment || next[1] == 0 || next[1] > segment) break;
        if (next[2] != d[2] || next[3] != d[3] || next[0] != prev[0] + prev[1]) break;
        if (total + next[1] > BR_GSO_MAX_BYTES) break;
        total += next[1];
        n++;
    }
    return n;
}

/* Sends count packets; desc holds BR_UDP_SEND_WORDS words per packet
 * (offset, length, IPv4 address in host order, port). Returns how many were
 * sent (a prefix of the batch), or -errno when not even the first went out
 * for a reason other than a full buffer. */
int32_t br_udp_send_batch(int32_t fd, const uint8_t *buf, uint32_t buf_len, const uint32_t *desc,
                          uint32_t count) {
    if (buf == NULL || desc == NULL) return -EINVAL;
    struct mmsghdr msgs[BR_MMSG_CHUNK];
    struct iovec iovs[BR_MMSG_CHUNK];
    struct sockaddr_in addrs[BR_MMSG_CHUNK];
    uint32_t packets[BR_MMSG_CHUNK];
    union {
        char bytes[CMSG_SPACE(sizeof(uint16_t))];
        struct cmsghdr align;
    } controls[BR_MMSG_CHUNK];
    for (uint32_t i = 0; i < count; i++) {
        const uint32_t *d = desc + (uint64_t)i * BR_UDP_SEND_WORDS;
        if ((uint64_t)d[0] + d[1] > buf_len || d[3] > 65535) {
            if (i == 0) return -EINVAL;
            count = i; /* Send the good prefix; report the rest unsent. */
            break;
        }
    }
    uint32_t sent = 0;
    while (sent < count) {
        uint32_t n = 0, next = sent;
        while (n < BR_MMSG_CHUNK && next < count) {
            const uint32_t *d = desc + (uint64_t)next * BR_UDP_SEND_WORDS;
            uint32_t run = gso_run(desc, next, count);
            memset(&addrs[n], 0, sizeof addrs[n]);
            addrs[n].sin_family = AF_INET;
            addrs[n].sin_addr.s_addr = htonl(d[2]);
            addrs[n].sin_port = htons((uint16_t)d[3]);
            const uint32_t *last = desc + (uint64_t)(next + run - 1) * BR_UDP_SEND_WORDS;
            iovs[n].iov_base = (void *)(buf + d[0]);
            iovs[n].iov_len = last[0] + last[1] - d[0];
            memset(&msgs[n], 0, sizeof msgs[n]);
            msgs[n].msg_hdr.msg_name = &addrs[n];
            msgs[n].msg_hdr.msg_namelen = sizeof addrs[n];
            msgs[n].msg_hdr.msg_iov = &iovs[n];
            msgs[n].msg_hdr.msg_iovlen = 1;
            if (run > 1) {
                memset(&controls[n], 0, sizeof controls[n]);
                msgs[n].msg_hdr.msg_control = controls[n].bytes;
                msgs[n].msg_hdr.msg_controllen = sizeof controls[n].bytes;
                struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[n].msg_hdr);
                cm->cmsg_level = IPPROTO_UDP;
                cm->cmsg_type = UDP_SEGMENT;
                cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
                uint16_t segment = (uint16_t)d[1];
                memcpy(CMSG_DATA(cm), &segment, sizeof segment);
            }
            packets[n++] = run;
            next += run;
        }
        int r = sendmmsg(fd, msgs, n, MSG_DONTWAIT);
        if (r < 0) {
            int err = errno;
            if (err == EINTR) continue;
            if (packets[0] > 1 && gso_refused(err)) {
                gso_enabled = 0; /* Rebuild the chunk packet by packet. */
                continue;
            }
            /* A full buffer or an unreachable host (ICMP error queued on the
             * socket) skips nothing for good: report what went out. */
            if (err == EAGAIN || err == EWOULDBLOCK || sent > 0) return (int32_t)sent;
            if (err == ECONNREFUSED || err == EHOSTUNREACH || err == ENETUNREACH) {
                sent += packets[0]; /* Those packets are lost; the rest may still go. */
                continue;
            }
            return -err;
        }
        for (int i = 0; i < r; i++) sent += packets[i];
        /* Stopped early: a full buffer, or a segmented datagram the kernel
         * refused; the next loop's first message tells which. */
        if ((uint32_t)r < n && !(packets[r] > 1 && gso_enabled)) return (int32_t)sent;
    }
    return (int32_t)sent;
}

/* Waits up to timeout_ms for packets, then receives up to max_count of them
 * into slots of slot_bytes each. meta gets BR_UDP_RECV_WORDS words per
 * packet: length, source IPv4 (host order), source port, and 1 when the
 * datagram was longer than its slot (truncated). Returns the count, 0 on
 * timeout, or -errno. */
int32_t br_udp_recv_batch(int32_t fd, uint8_t *buf, uint32_t buf_len, uint32_t slot_bytes,
                          uint32_t max_count, uint32_t *meta, int32_t timeout_ms) {
    if (buf == NULL || meta == NULL || slot_bytes == 0) return -EINVAL;
    if (max_count > BR_MMSG_CHUNK) max_count = BR_MMSG_CHUNK;
    if ((uint64_t)slot_bytes * max_count > buf_len) return -EINVAL;
    /* A zero timeout skips poll: recvmmsg with MSG_DONTWAIT says as much,
     * one system call sooner. */
    if (timeout_ms != 0) {
        struct pollfd pfd = {.fd = fd, .events = POLLIN, .revents = 0};
        int ready = poll(&pfd, 1, timeout_ms);
        if (ready < 0) return errno == EINTR ? 0 : -errno;
        if (ready == 0) return 0;
    }
    struct mmsghdr msgs[BR_MMSG_CHUNK];
    struct iovec iovs[BR_MMSG_CHUNK];
    struct sockaddr_in addrs[BR_MMSG_CHUNK];
    memset(msgs, 0, sizeof(struct mmsghdr) * max_count);
    for (uint32_t i = 0; i < max_count; i++) {
        iovs[i].iov_base = buf + (uint64_t)i * slot_bytes;
        iovs[i].iov_len = slot_bytes;
        msgs[i].msg_hdr.msg_name = &addrs[i];
        msgs[i].msg_hdr.msg_namelen = sizeof addrs[i];
        msgs[i].msg_hdr.msg_iov = &iovs[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int r = recvmmsg(fd, msgs, max_count, MSG_DONTWAIT, NULL);
    if (r < 0) {
        /* Queued ICMP errors surface here as ECONNREFUSED; they carry no
         * packet, so the caller just tries again. */
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
            errno == ECONNREFUSED || errno == EHOSTUNREACH || errno == ENETUNREACH)
            return 0;
        return -errno;
    }
    for (int i = 0; i < r; i++) {
        uint32_t *m = meta + (uint64_t)i * BR_UDP_RECV_WORDS;
        m[0] = msgs[i].msg_len;
        m[1] = ntohl(addrs[i].sin_addr.s_addr);
        m[2] = ntohs(addrs[i].sin_port);
        m[3] = (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) ? 1 : 0;
    }
    return r;
}
