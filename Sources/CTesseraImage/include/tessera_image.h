// C shim over libjpeg(-turbo) and libpng for Tessera. Both libraries report errors by longjmp
// (libjpeg's default handler even calls exit()); these functions own that, and return -1 with a
// message instead, so a corrupt file becomes a Swift error and never ends the process.
#ifndef TESSERA_IMAGE_H
#define TESSERA_IMAGE_H
#include <stddef.h>

#define TI_ERROR_SIZE 256

typedef struct {
  int width, height, components;  // as stored (before orientation)
  int orientation;                // EXIF orientation 1..8 (1 when absent)
  int progressive;
} ti_jpeg_info;

int ti_jpeg_read_info(const unsigned char *data, unsigned long size, ti_jpeg_info *info, char *error);

// Output size of the whole image at scale 1/denom (denom 1, 2, 4 or 8), as libjpeg computes it.
int ti_jpeg_scaled_size(const unsigned char *data, unsigned long size, int denom, int *width, int *height,
                        char *error);

// Decodes rows y..y+h and columns x..x+w of the image at scale 1/denom (coordinates in the scaled
// image) into out: h rows of w pixels of out_components bytes (1 gray, 3 RGB). Corrupt data, even
// what libjpeg would only warn about (a truncated file), is an error.
int ti_jpeg_decode(const unsigned char *data, unsigned long size, int denom, int x, int y, int w, int h,
                   int out_components, unsigned char *out, char *error);

// Sequential decoding of a whole JPEG, rows in order, each decoded once (for converting images far
// larger than memory): open, then read rows until all are read, then close. out_components 1 or 3.
typedef struct ti_jpeg_stream ti_jpeg_stream;
ti_jpeg_stream *ti_jpeg_stream_open(const unsigned char *data, unsigned long size, int out_components, int *width,
                                    int *height, char *error);
// The same, reading the file through a small buffer (stdio) so neither pixels nor file bytes are held.
ti_jpeg_stream *ti_jpeg_stream_open_file(const char *path, int out_components, int *width, int *height, char *error);
// Reads the next `rows` rows (rows × width × out_components bytes) into out; 0, or −1 with the reason.
int ti_jpeg_stream_read(ti_jpeg_stream *s, int rows, unsigned char *out, char *error);
void ti_jpeg_stream_close(ti_jpeg_stream *s);

// Encodes 8-bit gray (1) or RGB (3) pixels, or CMYK (4; stored as given, with libjpeg's Adobe
// marker; 5: CMYK written as YCCK); *out is malloc'ed, release with ti_free.
int ti_jpeg_encode(const unsigned char *pixels, int width, int height, int components, int quality,
                   unsigned char **out, unsigned long *out_size, char *error);

typedef struct {
  int width, height;
  int channels;   // after expansion: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
  int bit_depth;  // 8 or 16 after expansion
  int interlaced;
  int orientation;  // EXIF orientation 1…8 from an eXIf chunk; 1 without one
} ti_png_info;

int ti_png_read_info(const unsigned char *data, size_t size, ti_png_info *info, char *error);

// Decodes rows y0..<y1 (palette and low bit depths expanded, 16-bit kept, host byte order) into out:
// (y1 - y0) rows of width × channels samples of bit_depth/8 bytes. Earlier rows are decoded and
// dropped one at a time, later ones never read; interlaced files are decoded whole (needs a buffer
// of the full image, which the caller provides through out when y0 = 0 and y1 = height).
int ti_png_decode_rows(const unsigned char *data, size_t size, int y0, int y1, unsigned char *out, char *error);

// Writes 8-bit pixels (1 gray, 2 gray+alpha, 3 RGB, 4 RGBA) to a PNG file.
int ti_png_write(const char *path, const unsigned char *pixels, int width, int height, int channels, char *error);

void ti_free(void *p);

#endif
