/* server/auth.c -- secrets and tokens (see auth.h). */
#include "auth.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>

#include "tn.h"

int auth_random_secret(const char *prefix, char out[64])
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	unsigned char raw[43];
	size_t plen = strlen(prefix);

	if (plen > 8)
		return TN_EINVAL;
	if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw)
		return TN_EIO;
	memcpy(out, prefix, plen);
	/* 43 chars of 6 bits each from a 64-letter alphabet: 258 bits. */
	for (size_t i = 0; i < sizeof raw; i++)
		out[plen + i] = alphabet[raw[i] & 63];
	out[plen + sizeof raw] = '\0';
	return 0;
}

void auth_hash_hex(const void *data, size_t len, char out[AUTH_HASH_HEX])
{
	unsigned char md[32];
	unsigned int mdlen = 0;

	EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL);
	for (unsigned int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[64] = '\0';
}

int auth_hash_equal(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	if (la != lb)
		return 0;
	return CRYPTO_memcmp(a, b, la) == 0;
}
