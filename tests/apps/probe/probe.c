/* A test program run inside a grain's sandbox. Each argument is one check;
 * each prints one line "check: result" on stdout. Built statically so that
 * a package needs nothing else. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

static void report(const char *check, int ok) {
    if (ok) printf("%s: ok\n", check);
    else printf("%s: %s\n", check, strerror(errno));
    fflush(stdout);
}

static void check_read(const char *path) {
    char buf[64];
    int fd = open(path, O_RDONLY);
    if (fd < 0) { report(path, 0); return; }
    ssize_t n = read(fd, buf, sizeof buf);
    close(fd);
    report(path, n >= 0);
}

static void check_connect(const char *spec) {
    char host[64];
    int port = 0;
    if (sscanf(spec, "%63[^:]:%d", host, &port) != 2) { puts("bad spec"); return; }
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, host, &addr.sin_addr) != 1) { puts("bad host"); return; }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { report(spec, 0); return; }
    int ok = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
    report(spec, ok);
    close(fd);
}

static void check_socket(int family, int type, const char *name) {
    int fd = socket(family, type, 0);
    report(name, fd >= 0);
    if (fd >= 0) close(fd);
}

static void alloc(long megabytes) {
    for (long i = 0; i < megabytes; i++) {
        char *block = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (block == MAP_FAILED) { report("alloc", 0); return; }
        memset(block, 1, 1 << 20);
    }
    printf("alloc: %ld MiB\n", megabytes);
    fflush(stdout);
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "uid") == 0) {
            printf("uid: %d\n", (int)getuid());
            fflush(stdout);
        } else if (strncmp(arg, "read=", 5) == 0) {
            check_read(arg + 5);
        } else if (strncmp(arg, "write=", 6) == 0) {
            int fd = open(arg + 6, O_WRONLY | O_CREAT | O_TRUNC, 0600);
            int ok = fd >= 0 && write(fd, "secret\n", 7) == 7;
            report(arg, ok);
            if (fd >= 0) close(fd);
        } else if (strncmp(arg, "connect=", 8) == 0) {
            check_connect(arg + 8);
        } else if (strcmp(arg, "packet") == 0) {
            check_socket(AF_PACKET, SOCK_RAW, "packet");
        } else if (strcmp(arg, "netlink") == 0) {
            check_socket(AF_NETLINK, SOCK_RAW, "netlink");
        } else if (strcmp(arg, "unix") == 0) {
            check_socket(AF_UNIX, SOCK_STREAM, "unix");
        } else if (strcmp(arg, "ptrace") == 0) {
            report("ptrace", syscall(SYS_ptrace, 0 /* TRACEME */, 0, 0, 0) == 0);
        } else if (strcmp(arg, "unshare") == 0) {
            report("unshare", syscall(SYS_unshare, 0x40000000 /* NEWNET */) == 0);
        } else if (strncmp(arg, "alloc=", 6) == 0) {
            alloc(atol(arg + 6));
        } else if (strncmp(arg, "fd3=", 4) == 0) {
            size_t n = strlen(arg + 4);
            report("fd3", write(3, arg + 4, n) == (ssize_t)n);
        } else if (strcmp(arg, "sleep") == 0) {
            puts("sleeping");
            fflush(stdout);
            for (;;) pause();
        } else {
            printf("%s: unknown check\n", arg);
        }
    }
    return 0;
}
