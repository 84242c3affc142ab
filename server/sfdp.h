/* server/sfdp.h -- decoding a flash part's own SFDP table (JESD216, rev A-F):
 * the Basic Flash Parameter Table (density, erase types, "4 KB erase
 * supported throughout the device") and, when present, the Sector Map
 * Parameter Table.  Bounded: nothing is read past `len`; every malformed
 * table is refused with a reason.
 * Owns: nothing.  Threads: any (pure). */
#ifndef TN_SFDP_H
#define TN_SFDP_H

#include <stddef.h>
#include <stdint.h>

#include "tn.h"

#define SFDP_MAX_LEN 4096        /* bytes of SFDP a device may send */
#define SFDP_MAX_REGIONS 32

typedef struct sfdp_erase_type {
	uint32_t size;               /* bytes; 0 when the type is not defined */
	uint8_t opcode;
} sfdp_erase_type;

/* One region of a sector map configuration, in address order. */
typedef struct sfdp_region {
	uint64_t size;               /* bytes */
	uint8_t erase_mask;          /* bit i: erase type i+1 works in this region */
} sfdp_region;

/* One configuration of the Sector Map Parameter Table.  Which one is active
 * depends on the chip's configuration registers, which the server cannot
 * read, so every one is kept. */
typedef struct sfdp_config {
	uint8_t id;                  /* configuration ID (detection-command bits) */
	uint8_t first, nregions;     /* its regions: regions[first .. first+nregions) */
} sfdp_config;

typedef struct sfdp_info {
	uint8_t major, minor;        /* SFDP revision of the header */
	uint8_t bfpt_major, bfpt_minor;
	uint64_t density;            /* bytes */
	int erase_4k_uniform;        /* BFPT DWORD1 bits 1:0 == 01 */
	uint8_t erase_4k_opcode;     /* BFPT DWORD1 bits 15:8 (when uniform) */
	sfdp_erase_type erase[4];    /* BFPT DWORDs 8-9 erase types 1-4 */
	int has_sector_map;
	int nconfigs;                /* sector map configurations seen */
	int nregions;                /* over all configurations, at most SFDP_MAX_REGIONS */
	sfdp_region regions[SFDP_MAX_REGIONS];
	sfdp_config configs[SFDP_MAX_REGIONS]; /* each has a region, so no more */
} sfdp_info;

/* Decodes raw SFDP bytes.  Returns 0, or TN_EINVAL with err saying what is
 * wrong ("bad signature", "BFPT pointer past the end (0x1f0 > 256)", ...). */
int sfdp_decode(const uint8_t *buf, size_t len, sfdp_info *out, tn_error *err);

/* The same from base64 (as a device sends it in hello). */
int sfdp_decode_base64(const char *b64, sfdp_info *out, tn_error *err);

/* Bytes of the chip erasable in blocks of exactly `size`: from the sector
 * map when there is one (with several configurations, the smallest coverage
 * over them: the server cannot ask which one is active), else the whole
 * density for every defined erase type (and for 4 KB only when
 * erase_4k_uniform or an erase type of 4 KB exists). */
uint64_t sfdp_coverage(const sfdp_info *info, uint32_t size);

#endif
