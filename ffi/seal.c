/* Batched XChaCha20-Poly1305 and x25519 over libsodium.
 *
 * One FFI call seals or opens a whole batch of packets: a call costs far
 * more than sealing a small packet, so per-packet calls would spend most of
 * their time crossing into C. */
#include "blackrock.h"

#include <sodium.h>
#include <string.h>

/* Status bytes written per packet. */
enum { BR_OK = 0, BR_BAD_BOUNDS = 1, BR_BAD_KEY = 2, BR_BAD_TAG = 3 };

int32_t br_init(void) { return sodium_init() < 0 ? -1 : 0; }

/* Checks that a packet and its tag lie inside the buffer, without overflow:
 * the descriptor comes from JavaScript and is not trusted. */
static int packet_fits(const uint32_t *d, uint32_t buf_len) {
    uint64_t end = (uint64_t)d[BR_DESC_OFFSET] + d[BR_DESC_AD_LEN] + d[BR_DESC_MSG_LEN] +
                   BR_TAG_BYTES;
    return end <= buf_len;
}

typedef int (*aead_fn)(uint8_t *buf, uint32_t ad_len, uint32_t msg_len, const uint8_t *nonce,
                       const uint8_t *key);

static int seal_one(uint8_t *p, uint32_t ad_len, uint32_t msg_len, const uint8_t *nonce,
                    const uint8_t *key) {
    uint8_t *msg = p + ad_len;
    return crypto_aead_xchacha20poly1305_ietf_encrypt_detached(
        msg, msg + msg_len, NULL, msg, msg_len, p, ad_len, NULL, nonce, key);
}

static int open_one(uint8_t *p, uint32_t ad_len, uint32_t msg_len, const uint8_t *nonce,
                    const uint8_t *key) {
    uint8_t *msg = p + ad_len;
    return crypto_aead_xchacha20poly1305_ietf_decrypt_detached(msg, NULL, msg, msg_len,
                                                               msg + msg_len, p, ad_len,
                                                               nonce, key);
}

/* Runs fn over every packet; returns how many failed (their status byte
 * says why), or -1 when the arrays themselves are unusable. */
static int32_t run_batch(aead_fn fn, uint8_t *buf, uint32_t buf_len, const uint32_t *desc,
                         uint32_t count, const uint8_t *nonces, const uint8_t *keys,
                         uint32_t key_count, uint8_t *status, uint8_t tag_failure) {
    if (buf == NULL || desc == NULL || nonces == NULL || keys == NULL || status == NULL)
        return -1;
    int32_t failed = 0;
    for (uint32_t i = 0; i < count; i++) {
        const uint32_t *d = desc + (uint64_t)i * BR_DESC_WORDS;
        if (!packet_fits(d, buf_len)) {
            status[i] = BR_BAD_BOUNDS;
        } else if (d[BR_DESC_KEY] >= key_count) {
            status[i] = BR_BAD_KEY;
        } else if (fn(buf + d[BR_DESC_OFFSET], d[BR_DESC_AD_LEN], d[BR_DESC_MSG_LEN],
                      nonces + (uint64_t)i * BR_NONCE_BYTES,
                      keys + (uint64_t)d[BR_DESC_KEY] * BR_KEY_BYTES) != 0) {
            status[i] = tag_failure;
        } else {
            status[i] = BR_OK;
            continue;
        }
        failed++;
    }
    return failed;
}

int32_t br_seal_batch(uint8_t *buf, uint32_t buf_len, const uint32_t *desc, uint32_t count,
                      const uint8_t *nonces, const uint8_t *keys, uint32_t key_count,
                      uint8_t *status) {
    return run_batch(seal_one, buf, buf_len, desc, count, nonces, keys, key_count, status,
                     BR_BAD_BOUNDS);
}

int32_t br_open_batch(uint8_t *buf, uint32_t buf_len, const uint32_t *desc, uint32_t count,
                      const uint8_t *nonces, const uint8_t *keys, uint32_t key_count,
                      uint8_t *status) {
    return run_batch(open_one, buf, buf_len, desc, count, nonces, keys, key_count, status,
                     BR_BAD_TAG);
}

/* Refuses low-order points: libsodium returns -1 when the result is all
 * zeros, which would make every such "shared" key the same. */
int32_t br_x25519(uint8_t *shared, const uint8_t *secret, const uint8_t *public_key) {
    return crypto_scalarmult_curve25519(shared, secret, public_key) == 0 ? 0 : -1;
}

int32_t br_ed25519_pk_to_x25519(uint8_t *x_pk, const uint8_t *ed_pk) {
    return crypto_sign_ed25519_pk_to_curve25519(x_pk, ed_pk) == 0 ? 0 : -1;
}

/* libsodium's secret-key map wants the 64-byte expanded form (seed then
 * public key), but only the seed's hash matters, so the seed suffices. */
int32_t br_ed25519_seed_to_x25519(uint8_t *x_sk, const uint8_t *ed_seed) {
    uint8_t hash[crypto_hash_sha512_BYTES];
    crypto_hash_sha512(hash, ed_seed, 32);
    hash[0] &= 248;
    hash[31] &= 127;
    hash[31] |= 64;
    memcpy(x_sk, hash, 32);
    sodium_memzero(hash, sizeof hash);
    return 0;
}
