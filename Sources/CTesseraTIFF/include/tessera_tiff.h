#ifndef TESSERA_TIFF_H
#define TESSERA_TIFF_H

#include <stddef.h>
#include <stdint.h>

// libtiff (libtiff.so.6), loaded at run time: the default build needs no libtiff headers or -dev
// package; a machine without the library gets a clear error naming it.

#define TI_TIFF_ERROR_SIZE 512

// Loads libtiff once; 0 when it is there, −1 with the reason in error otherwise.
int ti_tiff_load(char *error);

typedef struct ti_tiff ti_tiff;

// One image file directory (a page or a SubIFD), as read from its tags.
typedef struct {
  uint64_t offset;          // the IFD's file offset (selects it again)
  int is_subifd;            // 1: reached through a SubIFDs tag
  int page;                 // main-chain index of the page (its own, or its parent's for a SubIFD)
  uint32_t width, height;
  int tiled;
  uint32_t tile_width, tile_height;  // tiled: tile size; stripped: width × rows per strip
  int bits, samples, sample_format, planar, photometric, compression;
  uint32_t subfile_type;    // NewSubfileType: bit 0 reduced resolution
  int n_subifds;
  int ycbcr_h, ycbcr_v;     // YCbCr subsampling
} ti_tiff_dir;

// Opens for reading; NULL with the reason in error.
ti_tiff *ti_tiff_open(const char *path, char *error);
void ti_tiff_close(ti_tiff *t);
int ti_tiff_is_bigtiff(ti_tiff *t);

// Lists every page of the main chain and every SubIFD (at most max), in file order; the count, or
// −1 with the reason (a loop in the IFD chain, an offset past the end) in error.
int ti_tiff_list(ti_tiff *t, ti_tiff_dir *out, int max, char *error);

// Decodes one tile (tiled) or strip (stripped) of the directory at offset: block (bx, by) in block
// units, written as interleaved samples (`samples` per pixel; JPEG-compressed YCbCr comes out as
// RGB) of bits/8 bytes, tile_width × tile_height pixels (edge blocks are padded). out must hold
// tile_width × tile_height × samples × bits/8 bytes. 0, or −1 with the reason in error.
int ti_tiff_read_block(ti_tiff *t, const ti_tiff_dir *d, uint32_t bx, uint32_t by, unsigned char *out, size_t size,
                       char *error);

// Decodes only rows [y0, y1) and columns [x0, x1) (tile pixels) of one JPEG-compressed 8-bit tile,
// straight from its raw bytes (and the directory's JPEGTables) with libjpeg-turbo: rows below y1
// are not decoded at all, rows above y0 only entropy-decoded, columns outside cropped before the
// inverse DCT. The pixels equal those of the whole tile's decoding. out: (y1 − y0) rows of
// (x1 − x0) × samples bytes (samples: 3 for YCbCr/RGB, else the directory's). 0, or −1 with the
// reason in error.
int ti_tiff_read_jpeg_part(ti_tiff *t, const ti_tiff_dir *d, uint32_t bx, uint32_t by, uint32_t x0, uint32_t y0,
                           uint32_t x1, uint32_t y1, unsigned char *out, char *error);

// Whether this libtiff decodes a compression scheme.
int ti_tiff_codec_configured(int compression);

// Writing tiled TIFF (classic or BigTIFF): directories one after another, tiles of 8-bit samples.
typedef struct ti_tiff_writer ti_tiff_writer;
ti_tiff_writer *ti_tiff_writer_open(const char *path, int bigtiff, char *error);
// Starts a directory: width × height pixels of `samples` (1 or 3) 8-bit samples, square tiles,
// compression 1 (none), 7 (JPEG, YCbCr 2×2 for RGB), 8 (deflate) or 5 (LZW); reduced: NewSubfileType 1.
int ti_tiff_writer_begin(ti_tiff_writer *w, uint32_t width, uint32_t height, int samples, uint32_t tile,
                         int compression, int quality, int reduced, const char *description, char *error);
// Writes tile (tx, ty): tile × tile interleaved pixels (edge tiles padded by the caller).
int ti_tiff_writer_tile(ti_tiff_writer *w, uint32_t tx, uint32_t ty, const unsigned char *pixels, char *error);
// Ends the directory.
int ti_tiff_writer_end(ti_tiff_writer *w, char *error);
int ti_tiff_writer_close(ti_tiff_writer *w, char *error);

#endif
