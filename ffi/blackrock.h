/* Shims that Deno calls through FFI for the hot paths. Every function
 * returns a status the caller must check; none allocates. */
#ifndef BLACKROCK_FFI_H
#define BLACKROCK_FFI_H

#include <stdint.h>

/* Sizes of XChaCha20-Poly1305 (IETF) as libsodium implements it. */
#define BR_KEY_BYTES 32
#define BR_NONCE_BYTES 24
#define BR_TAG_BYTES 16

/* One packet of a batch, four u32 words in the caller's descriptor array:
 *   offset    where the packet starts in the batch buffer;
 *   ad_len    bytes of associated data (authenticated, not encrypted);
 *   msg_len   bytes of message after the associated data;
 *   key_index which 32-byte key of the key array to use.
 * Sealing encrypts the message in place and writes the tag right after it,
 * so the caller reserves BR_TAG_BYTES there. Opening takes msg_len as the
 * ciphertext length without the tag, which follows it. */
enum { BR_DESC_OFFSET, BR_DESC_AD_LEN, BR_DESC_MSG_LEN, BR_DESC_KEY, BR_DESC_WORDS };

int32_t br_init(void);
int32_t br_seal_batch(uint8_t *buf, uint32_t buf_len, const uint32_t *desc, uint32_t count,
                      const uint8_t *nonces, const uint8_t *keys, uint32_t key_count,
                      uint8_t *status);
int32_t br_open_batch(uint8_t *buf, uint32_t buf_len, const uint32_t *desc, uint32_t count,
                      const uint8_t *nonces, const uint8_t *keys, uint32_t key_count,
                      uint8_t *status);
int32_t br_x25519(uint8_t *shared, const uint8_t *secret, const uint8_t *public_key);
int32_t br_ed25519_pk_to_x25519(uint8_t *x_pk, const uint8_t *ed_pk);
int32_t br_ed25519_seed_to_x25519(uint8_t *x_sk, const uint8_t *ed_seed);

/* Frees the space behind whole 4 KiB blocks of the file at path (a NUL-
 * terminated string); the file keeps its size and the range reads as zeros.
 * Returns 0 or -errno. */
int32_t br_punch_blocks(const char *path, uint32_t first_block, uint32_t block_count);

/* Positional file I/O for the block daemon's cache and directory store.
 * br_file_open returns a descriptor or -errno; the others 0 or -errno.
 * Deno calls br_pread/br_pwrite both directly and on its blocking thread
 * pool, so that large copies run beside the event loop. */
int32_t br_file_open(const char *path, int32_t writable);
int32_t br_file_close(int32_t fd);
int32_t br_pread(int32_t fd, uint8_t *buf, uint32_t len, uint64_t offset);
int32_t br_pwrite(int32_t fd, const uint8_t *buf, uint32_t len, uint64_t offset);

#endif
