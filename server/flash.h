/* server/flash.h -- SPI flash parts and the one decision that matters:
 * can this device's flash take this firmware?
 * Owns: the flash_part and flash_facts types, flash_facts_* (what is known
 * about one device's part, merged from the table rows sharing its JEDEC id,
 * its SFDP and its hello), and flash_check() (the verdict and its reason).
 * Threads: any (pure functions). */
#ifndef TN_FLASH_H
#define TN_FLASH_H

#include <stddef.h>
#include <stdint.h>

#include "tn.h"

#define FLASH_MAX_LAYOUTS 8   /* erase commands per part */
#define FLASH_MAX_REGIONS 8   /* regions per erase command */

/* One region of an erase command's map: `count` blocks of `size` bytes that
 * the command erases one at a time.  size 0 means "this command does not
 * work here" (it still spans count * unit bytes of address space: `span`). */
typedef struct flash_region {
	uint32_t size;    /* erase granularity in bytes, 0: not erasable by this command */
	uint32_t count;
	uint64_t span;    /* bytes of address space this region covers */
} flash_region;

/* One erase command: "4K*4096 @0x20", "4K*16+64K*255 @0xD8", "chip @0x60". */
typedef struct flash_layout {
	uint8_t opcode;
	int chip;                       /* whole-chip erase: no regions */
	int nregions;
	flash_region regions[FLASH_MAX_REGIONS];
} flash_layout;

/* A row of the flash-parts table (the CONTRACT import format). */
typedef struct flash_part {
	char vendor[48];
	char part[64];
	uint32_t jedec;                 /* 0xMMDDDD: manufacturer, then 2 device bytes */
	uint64_t size;                  /* bytes */
	int uniform_4k;                 /* 4 KB erase across the entire capacity */
	int uniform_64k;                /* 64 KB erase across the entire capacity */
	int nlayouts;
	flash_layout layouts[FLASH_MAX_LAYOUTS];
	char layouts_text[256];         /* as imported, for display */
	char shares_id_with[128];
	char source[192];               /* datasheet and revision */
	char notes[256];
} flash_part;

/* --- the decision ------------------------------------------------------------ */

#include <jansson.h>

#include "sfdp.h"

/* Ordered from best to worst: the verdict over several sources is the worst. */
typedef enum { FLASH_COMPATIBLE = 0, FLASH_UNKNOWN = 1, FLASH_INCOMPATIBLE = 2 } flash_verdict;

#define FLASH_MAX_UNIFORM 8

/* A firmware's flash requirements: {"flash":{"uniform_erase":[4096,65536],"min_size":524288}}. */
typedef struct flash_requirements {
	int nuniform;
	uint32_t uniform_erase[FLASH_MAX_UNIFORM]; /* erase sizes that must cover the whole chip */
	uint64_t min_size;                         /* 0: none */
} flash_requirements;

/* Everything known about one device's part: the table rows that carry its
 * JEDEC id (several when parts share one), its own SFDP, and the size its
 * hello reported.  All borrowed. */
typedef struct flash_facts {
	int has_jedec;
	uint32_t jedec;
	const flash_part *rows;
	size_t nrows;
	const sfdp_info *sfdp;      /* NULL when the device sent none, or it was refused */
	const char *sfdp_error;     /* why the device's SFDP was refused, or NULL */
	uint64_t reported_size;     /* 0: not reported */
} flash_facts;

/* Parses a firmware's "requirements" object (NULL or {} means none).
 * Returns 0 or TN_EINVAL naming the bad member. */
int flash_requirements_parse(json_t *requirements, flash_requirements *out, tn_error *err);

/* "4 KB and 64 KB erase across the whole chip, at least 512 KB". */
void flash_requirements_describe(const flash_requirements *req, char *buf, size_t cap);

/* The verdict for one device's part against one firmware's requirements, and
 * a reason naming the part, its JEDEC id and the unmet requirement, e.g.
 * "flash S25FL127S (JEDEC 01 20 18) has 4 KB erase in only 16 of 4096 4 KB
 * blocks; firmware 36.10 needs 4 KB and 64 KB erase across the whole chip".
 * Every source (each table row sharing the id, the part's SFDP) is checked;
 * the verdict is the worst of them.  No source at all is FLASH_UNKNOWN.
 * Pure: same input, same answer. */
flash_verdict flash_check(const flash_facts *f, const flash_requirements *req,
			  const char *fw_version, char *reason, size_t cap);

const char *flash_verdict_name(flash_verdict v);

/* "16 MB", "4 KB", "512 KB", "100 bytes". */
void flash_size_text(uint64_t bytes, char *buf, size_t cap);

#endif
