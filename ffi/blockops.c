/* Block-device helpers for the NBD daemon (services/blockd/).
 *
 * Deno has no fallocate, so freeing the space behind trimmed blocks, in the
 * local cache file and in a directory-backed volume, needs this shim. It
 * works by path so that no file descriptor has to cross from Deno. */
#include "blackrock.h"

#include <errno.h>
#include <fcntl.h>
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
