/* Block-device helpers for the NBD daemon (services/blockd/).
 *
 * Deno has no fallocate, so freeing the space behind trimmed blocks, in the
 * local cache file and in a directory-backed volume, needs this shim. It
 * works by path so that no file descriptor has to cross from Deno. */
#include "blackrock.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define BR_BLOCK_BYTES 4096

int32_t br_punch_blocks(const char *path, uint32_t first_block, uint32_t block_count) {
    if (block_count == 0) return 0;
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    off_t offset = (off_t)first_block * BR_BLOCK_BYTES;
    off_t length = (off_t)block_count * BR_BLOCK_BYTES;
    int status = 0;
    if (fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0) {
        status = -errno;
    }
    if (close(fd) != 0 && status == 0) status = -errno;
    return status;
}

int32_t br_file_open(const char *path, int32_t writable) {
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    return fd < 0 ? -errno : fd;
}

int32_t br_file_close(int32_t fd) { return close(fd) != 0 ? -errno : 0; }

/* Reads len bytes at offset, retrying short reads; bytes past the end of
 * the file are zero-filled. Returns 0 or -errno. */
int32_t br_pread(int32_t fd, uint8_t *buf, uint32_t len, uint64_t offset) {
    uint32_t done = 0;
    while (done < len) {
        ssize_t got = pread(fd, buf + done, len - done, (off_t)(offset + done));
        if (got < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (got == 0) {
            memset(buf + done, 0, len - done);
            break;
        }
        done += (uint32_t)got;
    }
    return 0;
}

/* Writes len bytes at offset, retrying short writes. Returns 0 or -errno. */
int32_t br_pwrite(int32_t fd, const uint8_t *buf, uint32_t len, uint64_t offset) {
    uint32_t done = 0;
    while (done < len) {
        ssize_t put = pwrite(fd, buf + done, len - done, (off_t)(offset + done));
        if (put < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        done += (uint32_t)put;
    }
    return 0;
}
