/* core/io/crc32c.c — CRC-32C (Castagnoli) and the TFRecord mask.
 *
 * TFRecord frames (TensorBoard event files) carry masked CRC-32C checksums;
 * plain zlib CRC-32 uses another polynomial and is wrong here. Parameters
 * (reflected polynomial 0x82F63B78, init and final XOR 0xFFFFFFFF, check
 * value crc("123456789") = 0xE3069283) are from RFC 3720 §B.4 and
 * formats.md §5.2.
 *
 * Slicing-by-8 (Intel's "slicing-by-N" scheme, Kounavis & Berry 2005):
 * table k holds the CRC of a byte followed by k zero bytes, so eight input
 * bytes are folded with eight lookups instead of eight dependent shifts.
 * Event files are small, but the same CRC may later guard checkpoint data. */
#include "io/tensorboard.h"

#include <pthread.h>
#include <string.h>

#define CRC32C_POLY 0x82F63B78u

static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_table_init(void)
{
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = b;
        for (int k = 0; k < 8; k++)
            c = (c >> 1) ^ (CRC32C_POLY & (0u - (c & 1u)));
        crc_table[0][b] = c;
    }
    for (uint32_t b = 0; b < 256; b++) {
        uint32_t c = crc_table[0][b];
        for (int t = 1; t < 8; t++) {
            c = (c >> 8) ^ crc_table[0][c & 0xFFu];
            crc_table[t][b] = c;
        }
    }
}

uint32_t lathe_crc32c(const void *p, size_t n)
{
    pthread_once(&crc_once, crc_table_init);
    const uint8_t *s = p;
    uint32_t c = 0xFFFFFFFFu;

    /* Blocks are assembled byte by byte, so neither the alignment of p nor
     * the host byte order matters. */
    while (n >= 8) {
        uint32_t lo = c ^ ((uint32_t)s[0] | (uint32_t)s[1] << 8 |
                           (uint32_t)s[2] << 16 | (uint32_t)s[3] << 24);
        c = crc_table[7][lo & 0xFFu] ^ crc_table[6][(lo >> 8) & 0xFFu] ^
            crc_table[5][(lo >> 16) & 0xFFu] ^ crc_table[4][lo >> 24] ^
            crc_table[3][s[4]] ^ crc_table[2][s[5]] ^
            crc_table[1][s[6]] ^ crc_table[0][s[7]];
        s += 8;
        n -= 8;
    }
    while (n--)
        c = (c >> 8) ^ crc_table[0][(c ^ *s++) & 0xFFu];
    return c ^ 0xFFFFFFFFu;
}

/* TFRecord masking (tensorflow/core/lib/hash/crc32c.h, formats.md §5.2):
 * rotate right by 15 and add a constant, so that a CRC computed over data
 * that itself embeds CRCs does not degenerate. */
uint32_t lathe_crc32c_mask(uint32_t crc)
{
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}
