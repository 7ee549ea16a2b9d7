/*
 * Copyright (c) 2013 Damien Miller <djm@mindrot.org>
 *
 * Adapted by Will Cosgrove <will@panic.com> for libssh2
 *
 * Permission to use, copy, modify, and distribute this software for any
 * purpose with or without fee is hereby granted, provided that the above
 * copyright notice and this permission notice appear in all copies.
 *
 * THE SOFTWARE IS PROVIDED "AS IS" AND THE AUTHOR DISCLAIMS ALL WARRANTIES
 * WITH REGARD TO THIS SOFTWARE INCLUDING ALL IMPLIED WARRANTIES OF
 * MERCHANTABILITY AND FITNESS. IN NO EVENT SHALL THE AUTHOR BE LIABLE FOR
 * ANY SPECIAL, DIRECT, INDIRECT, OR CONSEQUENTIAL DAMAGES OR ANY DAMAGES
 * WHATSOEVER RESULTING FROM LOSS OF USE, DATA OR PROFITS, WHETHER IN AN
 * ACTION OF CONTRACT, NEGLIGENCE OR OTHER TORTIOUS ACTION, ARISING OUT OF
 * OR IN CONNECTION WITH THE USE OR PERFORMANCE OF THIS SOFTWARE.
 *
 * SPDX-License-Identifier: BSD-2-Clause
 */

/* $OpenBSD: cipher-chachapoly.c,v 1.8 2016/08/03 05:41:57 djm Exp $ */

#include "libssh2_priv.h"
#include "cipher-chachapoly.h"

static int chachapoly_timingsafe_bcmp(const void *b1, const void *b2, size_t n)
{
    const unsigned char *p1 = b1, *p2 = b2;
    int ret = 0;

    for(; n > 0; n--)
        ret |= *p1++ ^ *p2++;
    return ret != 0;
}

/* reprise: frees what chachapoly_init took from libcrypto */
void chachapoly_free(struct chachapoly_ctx *ctx)
{
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO
    EVP_CIPHER_CTX_free(ctx->main_evp);
    EVP_CIPHER_CTX_free(ctx->header_evp);
    ctx->main_evp = NULL;
    ctx->header_evp = NULL;
#endif
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO_POLY1305
    EVP_MAC_CTX_free(ctx->poly_ctx);
    EVP_MAC_free(ctx->poly_mac);
    ctx->poly_ctx = NULL;
    ctx->poly_mac = NULL;
#endif
    (void)ctx;
}

int chachapoly_init(struct chachapoly_ctx *ctx, const unsigned char *key,
                    size_t keylen)
{
    if(keylen != (32 + 32)) /* 2 x 256-bit keys */
        return LIBSSH2_ERROR_INVAL;
    memset(ctx, 0, sizeof(*ctx));
    chacha_keysetup(&ctx->main_ctx, key, 256);
    chacha_keysetup(&ctx->header_ctx, key + 32, 256);
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO
    /* OpenSSL's ChaCha20 takes a 16-byte IV: a 32-bit little-endian block
       counter then a 96-bit nonce, which lays out the cipher state exactly as
       the original 64-bit counter and 64-bit nonce do as long as the counter
       stays below 2^32 (a packet is far smaller). */
    ctx->main_evp = EVP_CIPHER_CTX_new();
    ctx->header_evp = EVP_CIPHER_CTX_new();
    if(!ctx->main_evp || !ctx->header_evp ||
       !EVP_CipherInit(ctx->main_evp, EVP_chacha20(), key, NULL, 1) ||
       !EVP_CipherInit(ctx->header_evp, EVP_chacha20(), key + 32, NULL, 1) ||
       EVP_CIPHER_CTX_iv_length(ctx->header_evp) != 16) {
        EVP_CIPHER_CTX_free(ctx->main_evp);
        EVP_CIPHER_CTX_free(ctx->header_evp);
        ctx->main_evp = NULL;
        ctx->header_evp = NULL;
    }
#endif
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO_POLY1305
    ctx->poly_mac = EVP_MAC_fetch(NULL, "POLY1305", NULL);
    if(ctx->poly_mac)
        ctx->poly_ctx = EVP_MAC_CTX_new(ctx->poly_mac);
    if(!ctx->poly_ctx) {
        EVP_MAC_free(ctx->poly_mac);
        ctx->poly_mac = NULL;
    }
#endif
    return 0;
}

/* reprise: XOR 'len' bytes of 'src' into 'dest' with the key stream of
   'portable' or 'evp' from 'iv': a 64-bit little-endian block counter then
   the 64-bit nonce. Returns 0 on success. */
static int chachapoly_xor(struct chacha_ctx *portable, void *evp,
                          const unsigned char *iv, unsigned char *dest,
                          const unsigned char *src, size_t len)
{
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO
    if(evp) {
        if(!EVP_CipherInit(evp, NULL, NULL, iv, 1))
            return -1;
        while(len) {
            unsigned int n = len > 0x40000000 ? 0x40000000 : (unsigned int)len;
            if(EVP_Cipher(evp, dest, src, n) <= 0)
                return -1;
            dest += n;
            src += n;
            len -= n;
        }
        return 0;
    }
#else
    (void)evp;
#endif
    chacha_ivsetup(portable, iv + 8, iv);
    chacha_encrypt_bytes(portable, src, dest, (u32)len);
    return 0;
}

/* reprise: the Poly1305 tag of 'len' bytes at 'm' under the one-time 'key'.
   Returns 0 on success. */
static int chachapoly_poly1305(struct chachapoly_ctx *ctx, unsigned char *tag,
                               const unsigned char *m, size_t len,
                               const unsigned char *key)
{
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO_POLY1305
    if(ctx->poly_ctx) {
        size_t outl = 0;
        if(!EVP_MAC_init(ctx->poly_ctx, key, POLY1305_KEYLEN, NULL) ||
           !EVP_MAC_update(ctx->poly_ctx, m, len) ||
           !EVP_MAC_final(ctx->poly_ctx, tag, &outl, POLY1305_TAGLEN) ||
           outl != POLY1305_TAGLEN)
            return -1;
        return 0;
    }
#else
    (void)ctx;
#endif
    poly1305_auth(tag, m, len, key);
    return 0;
}

#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO
#define CHACHAPOLY_MAIN(ctx) &(ctx)->main_ctx, (ctx)->main_evp
#define CHACHAPOLY_HEADER(ctx) &(ctx)->header_ctx, (ctx)->header_evp
#else
#define CHACHAPOLY_MAIN(ctx) &(ctx)->main_ctx, NULL
#define CHACHAPOLY_HEADER(ctx) &(ctx)->header_ctx, NULL
#endif

/*
 * chachapoly_crypt() operates as following:
 * En/decrypt with header key 'aadlen' bytes from 'src', storing result
 * to 'dest'. The ciphertext here is treated as additional authenticated
 * data for MAC calculation.
 * En/decrypt 'len' bytes at offset 'aadlen' from 'src' to 'dest'. Use
 * POLY1305_TAGLEN bytes at offset 'len'+'aadlen' as the authentication
 * tag. This tag is written on encryption and verified on decryption.
 */
int chachapoly_crypt(struct chachapoly_ctx *ctx, libssh2_uint64_t seqnr,
                     unsigned char *dest, const unsigned char *src, size_t len,
                     size_t aadlen, int do_encrypt)
{
    unsigned char seqbuf[16]; /* layout: u64 counter || u64 seqno */
    unsigned char expected_tag[POLY1305_TAGLEN], poly_key[POLY1305_KEYLEN];
    int r = LIBSSH2_ERROR_DECRYPT;  /* fail */
    unsigned char *ptr = NULL;

    /*
     * Run ChaCha20 once to generate the Poly1305 key. The IV is the
     * packet sequence number.
     */
    memset(seqbuf, 0, sizeof(seqbuf));
    ptr = &seqbuf[8];
    ssh2_store_u64(&ptr, seqnr);
    memset(poly_key, 0, sizeof(poly_key));
    if(chachapoly_xor(CHACHAPOLY_MAIN(ctx), seqbuf, poly_key, poly_key,
                      sizeof(poly_key)))
        goto out;

    /* If decrypting, check tag before anything else */
    if(!do_encrypt) {
        const unsigned char *tag = src + aadlen + len;

        if(chachapoly_poly1305(ctx, expected_tag, src, aadlen + len,
                               poly_key) ||
           chachapoly_timingsafe_bcmp(expected_tag, tag, POLY1305_TAGLEN))
            goto out;
    }

    /* Crypt additional data */
    if(aadlen &&
       chachapoly_xor(CHACHAPOLY_HEADER(ctx), seqbuf, dest, src, aadlen))
        goto out;

    /* Set Chacha's block counter to 1 */
    seqbuf[0] = 1;
    if(chachapoly_xor(CHACHAPOLY_MAIN(ctx), seqbuf, dest + aadlen,
                      src + aadlen, len))
        goto out;

    /* If encrypting, calculate and append tag */
    if(do_encrypt &&
       chachapoly_poly1305(ctx, dest + aadlen + len, dest, aadlen + len,
                           poly_key))
        goto out;

    r = LIBSSH2_ERROR_NONE;
out:
    ssh2_explicit_zero(expected_tag, sizeof(expected_tag));
    ssh2_explicit_zero(seqbuf, sizeof(seqbuf));
    ssh2_explicit_zero(poly_key, sizeof(poly_key));
    return r;
}

/* Decrypt and extract the encrypted packet length */
int chachapoly_get_length(struct chachapoly_ctx *ctx, unsigned int *plenp,
                          libssh2_uint64_t seqnr, const unsigned char *cp,
                          size_t len)
{
    unsigned char buf[4], seqbuf[16];
    unsigned char *ptr = NULL;

    if(len < 4)
        return -1;  /* fail */
    memset(seqbuf, 0, sizeof(seqbuf));
    ptr = &seqbuf[8];
    ssh2_store_u64(&ptr, seqnr);
    if(chachapoly_xor(CHACHAPOLY_HEADER(ctx), seqbuf, buf, cp, 4))
        return -1;  /* fail */
    *plenp = ssh2_ntohu32(buf);
    return 0;  /* success */
}
