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

#endif
