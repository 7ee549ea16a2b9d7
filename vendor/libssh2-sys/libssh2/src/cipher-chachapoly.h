/* $OpenBSD: cipher-chachapoly.h,v 1.4 2014/06/24 01:13:21 djm Exp $ */

/*
 * Copyright (c) Damien Miller 2013 <djm@mindrot.org>
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
#ifndef CHACHA_POLY_AEAD_H
#define CHACHA_POLY_AEAD_H

#include "chacha.h"
#include "poly1305.h"

#define CHACHA_KEYLEN   32 /* Only 256-bit keys used here */

/* reprise: with OpenSSL, ChaCha20 and Poly1305 come from libcrypto (its
   vectorised code) when it provides them, as OpenSSH's
   cipher-chachapoly-libcrypto.c does for ChaCha20; else from the portable C of
   chacha.c and poly1305.c. */
#if defined(LIBSSH2_OPENSSL) && !defined(LIBSSH2_WOLFSSL) && \
    !defined(OPENSSL_NO_CHACHA)
#define LIBSSH2_CHACHAPOLY_LIBCRYPTO 1
#include <openssl/evp.h>
#if OPENSSL_VERSION_NUMBER >= 0x30000000L && !defined(OPENSSL_NO_POLY1305)
#define LIBSSH2_CHACHAPOLY_LIBCRYPTO_POLY1305 1
#endif
#endif

struct chachapoly_ctx {
    struct chacha_ctx main_ctx, header_ctx;
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO
    /* NULL when libcrypto could not give ChaCha20: main_ctx and header_ctx
       are used */
    EVP_CIPHER_CTX *main_evp, *header_evp;
#endif
#ifdef LIBSSH2_CHACHAPOLY_LIBCRYPTO_POLY1305
    /* NULL when libcrypto could not give Poly1305: poly1305_auth is used */
    EVP_MAC *poly_mac;
    EVP_MAC_CTX *poly_ctx;
#endif
};

int chachapoly_init(struct chachapoly_ctx *ctx, const unsigned char *key,
                    size_t keylen);
int chachapoly_crypt(struct chachapoly_ctx *ctx, libssh2_uint64_t seqnr,
                     unsigned char *dest, const unsigned char *src, size_t len,
                     size_t aadlen, int do_encrypt);
void chachapoly_free(struct chachapoly_ctx *ctx);
int chachapoly_get_length(struct chachapoly_ctx *ctx,
                          unsigned int *plenp, libssh2_uint64_t seqnr,
                          const unsigned char *cp, size_t len);

#endif /* CHACHA_POLY_AEAD_H */
