#include "tessera_image.h"

#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <jerror.h>
#include <png.h>

static void set_error(char *error, const char *msg) {
  if (error) {
    strncpy(error, msg, TI_ERROR_SIZE - 1);
    error[TI_ERROR_SIZE - 1] = 0;
  }
}

/* ---------------------------------------------------------------- JPEG */

typedef struct {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
} ti_jpeg_error;

static void ti_jpeg_error_exit(j_common_ptr cinfo) {
  ti_jpeg_error *e = (ti_jpeg_error *)cinfo->err;
  (*cinfo->err->format_message)(cinfo, e->message);
  longjmp(e->jump, 1);
}

// Warnings (msg_level −1) about the data — corrupt or missing entropy-coded bytes, a premature end
// of file — are errors here: a damaged file must be reported, not decoded into grey. Warnings about
// metadata only (an unknown JFIF revision, an odd Adobe transform code, a bad ICC chunk) leave the
// pixels intact and are ignored, as Pillow and browsers do.
static void ti_jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level >= 0) return;
  switch (cinfo->err->msg_code) {
  case JWRN_JFIF_MAJOR:
  case JWRN_ADOBE_XFORM:
  case JWRN_BOGUS_ICC:
    return;
  default:
    ti_jpeg_error_exit(cinfo);
  }
}

static void ti_jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

#define TI_JPEG_BEGIN(cinfo, err, error)                 \
  (cinfo).err = jpeg_std_error(&(err).mgr);              \
  (err).mgr.error_exit = ti_jpeg_error_exit;             \
  (err).mgr.emit_message = ti_jpeg_emit_message;         \
  (err).mgr.output_message = ti_jpeg_output_message;     \
  (err).message[0] = 0;                                  \
  if (setjmp((err).jump)) {                              \
    set_error(error, (err).message[0] ? (err).message : "corrupt JPEG data"); \
    jpeg_destroy_decompress(&(cinfo));                   \
    return -1;                                           \
  }

static unsigned read16(const unsigned char *p, int little) {
  return little ? (unsigned)(p[0] | (p[1] << 8)) : (unsigned)((p[0] << 8) | p[1]);
}

static unsigned long read32(const unsigned char *p, int little) {
  return little ? (unsigned long)p[0] | ((unsigned long)p[1] << 8) | ((unsigned long)p[2] << 16) | ((unsigned long)p[3] << 24)
                : ((unsigned long)p[0] << 24) | ((unsigned long)p[1] << 16) | ((unsigned long)p[2] << 8) | (unsigned long)p[3];
}

static int tiff_orientation(const unsigned char *t, unsigned long n);

// EXIF orientation from an APP1 payload ("Exif\0\0" + TIFF), every offset bounds-checked.
static int exif_orientation(const unsigned char *d, unsigned len) {
  if (len < 14 || memcmp(d, "Exif\0\0", 6) != 0) return 1;
  return tiff_orientation(d + 6, len - 6);
}

// EXIF orientation from a TIFF structure (a JPEG's APP1 after its prefix, a PNG's eXIf chunk).
static int tiff_orientation(const unsigned char *t, unsigned long n) {
  if (n < 8) return 1;
  int little;
  if (t[0] == 'I' && t[1] == 'I') little = 1;
  else if (t[0] == 'M' && t[1] == 'M') little = 0;
  else return 1;
  unsigned long ifd = read32(t + 4, little);
  if (ifd + 2 > n) return 1;
  unsigned count = read16(t + ifd, little);
  for (unsigned i = 0; i < count; i++) {
    unsigned long e = ifd + 2 + 12ul * i;
    if (e + 12 > n) return 1;
    if (read16(t + e, little) == 0x0112) {
      unsigned v = read16(t + e + 8, little);
      return (v >= 1 && v <= 8) ? (int)v : 1;
    }
  }
  return 1;
}

int ti_jpeg_read_info(const unsigned char *data, unsigned long size, ti_jpeg_info *info, char *error) {
  struct jpeg_decompress_struct cinfo;
  ti_jpeg_error err;
  TI_JPEG_BEGIN(cinfo, err, error)
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_save_markers(&cinfo, JPEG_APP0 + 1, 0xFFFF);
  jpeg_read_header(&cinfo, TRUE);
  info->width = (int)cinfo.image_width;
  info->height = (int)cinfo.image_height;
  info->components = cinfo.num_components;
  info->progressive = cinfo.progressive_mode ? 1 : 0;
  info->orientation = 1;
  for (jpeg_saved_marker_ptr m = cinfo.marker_list; m; m = m->next) {
    if (m->marker == JPEG_APP0 + 1) {
      info->orientation = exif_orientation(m->data, m->data_length);
      break;
    }
  }
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

static int setup_output(struct jpeg_decompress_struct *cinfo, int denom, int out_components, char *error) {
  if (denom != 1 && denom != 2 && denom != 4 && denom != 8) {
    set_error(error, "scale denominator must be 1, 2, 4 or 8");
    return -1;
  }
  cinfo->scale_num = 1;
  cinfo->scale_denom = (unsigned)denom;
  // CMYK and YCCK decode to CMYK (libjpeg converts YCCK) and are turned into RGB below.
  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) cinfo->out_color_space = JCS_CMYK;
  else cinfo->out_color_space = out_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  cinfo->dct_method = JDCT_ISLOW;
  return 0;
}

int ti_jpeg_scaled_size(const unsigned char *data, unsigned long size, int denom, int *width, int *height,
                        char *error) {
  struct jpeg_decompress_struct cinfo;
  ti_jpeg_error err;
  TI_JPEG_BEGIN(cinfo, err, error)
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (setup_output(&cinfo, denom, 3, error) != 0) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_calc_output_dimensions(&cinfo);
  *width = (int)cinfo.output_width;
  *height = (int)cinfo.output_height;
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

int ti_jpeg_decode(const unsigned char *data, unsigned long size, int denom, int x, int y, int w, int h,
                   int out_components, unsigned char *out, char *error) {
  struct jpeg_decompress_struct cinfo;
  ti_jpeg_error err;
  JSAMPLE *row = NULL;
  TI_JPEG_BEGIN(cinfo, err, error)
  jpeg_create_decompress(&cinfo);
  jpeg_mem_src(&cinfo, data, size);
  jpeg_read_header(&cinfo, TRUE);
  if (setup_output(&cinfo, denom, out_components, error) != 0) {
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  jpeg_start_decompress(&cinfo);
  if (x < 0 || y < 0 || w <= 0 || h <= 0 || (unsigned)(x + w) > cinfo.output_width ||
      (unsigned)(y + h) > cinfo.output_height) {
    set_error(error, "region outside the image");
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  // Columns: libjpeg-turbo decodes only the iMCU columns covering x..x+w (it may widen the range).
  JDIMENSION xoff = (JDIMENSION)x, cw = (JDIMENSION)w;
  if (x != 0 || (unsigned)w != cinfo.output_width) jpeg_crop_scanline(&cinfo, &xoff, &cw);
  if (y > 0) jpeg_skip_scanlines(&cinfo, (JDIMENSION)y);
  int comps = cinfo.output_components;
  // The row buffer is freed on the error path too: remember it in a static-free way via cleanup below.
  row = (JSAMPLE *)malloc((size_t)cw * (size_t)comps);
  if (!row) {
    set_error(error, "out of memory");
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  if (setjmp(err.jump)) {
    set_error(error, err.message[0] ? err.message : "corrupt JPEG data");
    free(row);
    jpeg_destroy_decompress(&cinfo);
    return -1;
  }
  size_t skip = (size_t)(x - (int)xoff) * (size_t)comps, bytes = (size_t)w * (size_t)comps;
  int cmyk = cinfo.out_color_space == JCS_CMYK;
  // Adobe's CMYK JPEGs store inverted inks (Photoshop's convention, as Pillow and libvips read them).
  int inverted = cinfo.saw_Adobe_marker;
  for (int r = 0; r < h; r++) {
    JSAMPROW rp = row;
    if (jpeg_read_scanlines(&cinfo, &rp, 1) != 1) {
      set_error(error, "premature end of JPEG data");
      free(row);
      jpeg_destroy_decompress(&cinfo);
      return -1;
    }
    if (!cmyk) {
      memcpy(out + (size_t)r * bytes, row + skip, bytes);
      continue;
    }
    // CMYK → RGB: each channel (255 − ink)·(255 − black)/255, then grey by Rec. 601 when asked.
    unsigned char *o = out + (size_t)r * (size_t)w * (size_t)out_components;
    const JSAMPLE *p = row + skip;
    for (int i = 0; i < w; i++, p += 4) {
      unsigned c = p[0], m = p[1], yy = p[2], k = p[3];
      if (!inverted) { c = 255 - c; m = 255 - m; yy = 255 - yy; k = 255 - k; }
      unsigned rr = (c * k + 127) / 255, gg = (m * k + 127) / 255, bb = (yy * k + 127) / 255;
      if (out_components == 1) o[i] = (unsigned char)((299 * rr + 587 * gg + 114 * bb + 500) / 1000);
      else { o[3 * i] = (unsigned char)rr; o[3 * i + 1] = (unsigned char)gg; o[3 * i + 2] = (unsigned char)bb; }
    }
  }
  free(row);
  jpeg_abort_decompress(&cinfo);
  jpeg_destroy_decompress(&cinfo);
  return 0;
}

struct ti_jpeg_stream {
  struct jpeg_decompress_struct cinfo;
  ti_jpeg_error err;
  JSAMPLE *row;
  int out_components, cmyk, inverted;
  FILE *file;
};

static ti_jpeg_stream *stream_open(const unsigned char *data, unsigned long size, FILE *file, int out_components,
                                   int *width, int *height, char *error);

ti_jpeg_stream *ti_jpeg_stream_open(const unsigned char *data, unsigned long size, int out_components, int *width,
                                    int *height, char *error) {
  return stream_open(data, size, NULL, out_components, width, height, error);
}

ti_jpeg_stream *ti_jpeg_stream_open_file(const char *path, int out_components, int *width, int *height, char *error) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    set_error(error, "cannot open the file");
    return NULL;
  }
  ti_jpeg_stream *s = stream_open(NULL, 0, f, out_components, width, height, error);
  if (!s) fclose(f);
  return s;
}

static ti_jpeg_stream *stream_open(const unsigned char *data, unsigned long size, FILE *file, int out_components,
                                   int *width, int *height, char *error) {
  ti_jpeg_stream *s = calloc(1, sizeof *s);
  if (!s) {
    set_error(error, "out of memory");
    return NULL;
  }
  s->cinfo.err = jpeg_std_error(&s->err.mgr);
  s->err.mgr.error_exit = ti_jpeg_error_exit;
  s->err.mgr.emit_message = ti_jpeg_emit_message;
  s->err.mgr.output_message = ti_jpeg_output_message;
  s->err.message[0] = 0;
  if (setjmp(s->err.jump)) {
    set_error(error, s->err.message[0] ? s->err.message : "corrupt JPEG data");
    jpeg_destroy_decompress(&s->cinfo);
    free(s->row);
    free(s);
    return NULL;
  }
  jpeg_create_decompress(&s->cinfo);
  if (file) jpeg_stdio_src(&s->cinfo, file);
  else jpeg_mem_src(&s->cinfo, data, size);
  jpeg_read_header(&s->cinfo, TRUE);
  if (setup_output(&s->cinfo, 1, out_components, error) != 0) {
    jpeg_destroy_decompress(&s->cinfo);
    free(s);
    return NULL;
  }
  jpeg_start_decompress(&s->cinfo);
  s->out_components = out_components;
  s->cmyk = s->cinfo.out_color_space == JCS_CMYK;
  s->inverted = s->cinfo.saw_Adobe_marker;
  s->row = malloc((size_t)s->cinfo.output_width * (size_t)s->cinfo.output_components);
  if (!s->row) {
    jpeg_destroy_decompress(&s->cinfo);
    free(s);
    set_error(error, "out of memory");
    return NULL;
  }
  *width = (int)s->cinfo.output_width;
  *height = (int)s->cinfo.output_height;
  return s;
}

int ti_jpeg_stream_read(ti_jpeg_stream *s, int rows, unsigned char *out, char *error) {
  if (setjmp(s->err.jump)) {
    set_error(error, s->err.message[0] ? s->err.message : "corrupt JPEG data");
    return -1;
  }
  size_t w = s->cinfo.output_width;
  for (int r = 0; r < rows; r++) {
    JSAMPROW rp = s->row;
    if (jpeg_read_scanlines(&s->cinfo, &rp, 1) != 1) {
      set_error(error, "premature end of JPEG data");
      return -1;
    }
    unsigned char *o = out + (size_t)r * w * (size_t)s->out_components;
    if (!s->cmyk) {
      memcpy(o, s->row, w * (size_t)s->out_components);
      continue;
    }
    const JSAMPLE *p = s->row;
    for (size_t i = 0; i < w; i++, p += 4) {
      unsigned c = p[0], m = p[1], yy = p[2], k = p[3];
      if (!s->inverted) { c = 255 - c; m = 255 - m; yy = 255 - yy; k = 255 - k; }
      unsigned rr = (c * k + 127) / 255, gg = (m * k + 127) / 255, bb = (yy * k + 127) / 255;
      if (s->out_components == 1) o[i] = (unsigned char)((299 * rr + 587 * gg + 114 * bb + 500) / 1000);
      else { o[3 * i] = (unsigned char)rr; o[3 * i + 1] = (unsigned char)gg; o[3 * i + 2] = (unsigned char)bb; }
    }
  }
  return 0;
}

void ti_jpeg_stream_close(ti_jpeg_stream *s) {
  if (!s) return;
  jpeg_abort_decompress(&s->cinfo);
  jpeg_destroy_decompress(&s->cinfo);
  if (s->file) fclose(s->file);
  free(s->row);
  free(s);
}

int ti_jpeg_encode(const unsigned char *pixels, int width, int height, int components, int quality,
                   unsigned char **out, unsigned long *out_size, char *error) {
  struct jpeg_compress_struct cinfo;
  ti_jpeg_error err;
  *out = NULL;
  *out_size = 0;
  cinfo.err = jpeg_std_error(&err.mgr);
  err.mgr.error_exit = ti_jpeg_error_exit;
  err.mgr.output_message = ti_jpeg_output_message;
  err.message[0] = 0;
  if (setjmp(err.jump)) {
    set_error(error, err.message[0] ? err.message : "JPEG encoding failed");
    jpeg_destroy_compress(&cinfo);
    if (*out) { free(*out); *out = NULL; }
    return -1;
  }
  jpeg_create_compress(&cinfo);
  jpeg_mem_dest(&cinfo, out, out_size);
  cinfo.image_width = (JDIMENSION)width;
  cinfo.image_height = (JDIMENSION)height;
  int ycck = components == 5;
  if (ycck) components = 4;
  cinfo.input_components = components;
  cinfo.in_color_space = components == 1 ? JCS_GRAYSCALE : components == 4 ? JCS_CMYK : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  if (ycck) jpeg_set_colorspace(&cinfo, JCS_YCCK);
  jpeg_set_quality(&cinfo, quality, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW rp = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * (size_t)width * (size_t)components);
    jpeg_write_scanlines(&cinfo, &rp, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return 0;
}

/* ---------------------------------------------------------------- PNG */

typedef struct {
  const unsigned char *data;
  size_t size, pos;
} ti_png_source;

typedef struct {
  jmp_buf jump;
  char message[TI_ERROR_SIZE];
} ti_png_error;

static void ti_png_read(png_structp png, png_bytep out, png_size_t n) {
  ti_png_source *s = (ti_png_source *)png_get_io_ptr(png);
  if (n > s->size - s->pos) png_error(png, "unexpected end of PNG data (truncated file)");
  memcpy(out, s->data + s->pos, n);
  s->pos += n;
}

static void ti_png_error_fn(png_structp png, png_const_charp msg) {
  ti_png_error *e = (ti_png_error *)png_get_error_ptr(png);
  strncpy(e->message, msg, TI_ERROR_SIZE - 1);
  e->message[TI_ERROR_SIZE - 1] = 0;
  longjmp(e->jump, 1);
}

static void ti_png_warning_fn(png_structp png, png_const_charp msg) { (void)png; (void)msg; }

// Opens the stream and applies the expansions; fills info. Must be called after setjmp.
static void ti_png_setup(png_structp png, png_infop pinfo, ti_png_info *info) {
  png_read_info(png, pinfo);
  int color = png_get_color_type(png, pinfo), depth = png_get_bit_depth(png, pinfo);
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (color == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (png_get_valid(png, pinfo, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  if (depth == 16) png_set_swap(png);  // host (little-endian) order
  int interlace = png_get_interlace_type(png, pinfo) != PNG_INTERLACE_NONE;
  if (interlace) png_set_interlace_handling(png);
  png_read_update_info(png, pinfo);
  info->width = (int)png_get_image_width(png, pinfo);
  info->height = (int)png_get_image_height(png, pinfo);
  info->channels = png_get_channels(png, pinfo);
  info->bit_depth = png_get_bit_depth(png, pinfo);
  info->interlaced = interlace;
  info->orientation = 1;
#ifdef PNG_eXIf_SUPPORTED
  png_uint_32 exif_len = 0;
  png_bytep exif = NULL;
  if (png_get_eXIf_1(png, pinfo, &exif_len, &exif) && exif) info->orientation = tiff_orientation(exif, exif_len);
#endif
}

#define TI_PNG_BEGIN(error)                                                                      \
  ti_png_error perr;                                                                             \
  perr.message[0] = 0;                                                                           \
  if (size < 8 || png_sig_cmp((png_const_bytep)data, 0, 8) != 0) {                               \
    set_error(error, "not a PNG file (bad signature)");                                          \
    return -1;                                                                                   \
  }                                                                                              \
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &perr, ti_png_error_fn, ti_png_warning_fn); \
  if (!png) { set_error(error, "out of memory"); return -1; }                                    \
  png_infop pinfo = png_create_info_struct(png);                                                 \
  if (!pinfo) { png_destroy_read_struct(&png, NULL, NULL); set_error(error, "out of memory"); return -1; } \
  ti_png_source src = {data, size, 0};                                                           \
  png_set_read_fn(png, &src, ti_png_read);                                                       \
  png_set_user_limits(png, 0x7fffffff, 0x7fffffff);                                              \
  if (setjmp(perr.jump)) {                                                                       \
    set_error(error, perr.message[0] ? perr.message : "corrupt PNG data");                       \
    png_destroy_read_struct(&png, &pinfo, NULL);                                                 \
    return -1;                                                                                   \
  }

int ti_png_read_info(const unsigned char *data, size_t size, ti_png_info *info, char *error) {
  TI_PNG_BEGIN(error)
  ti_png_setup(png, pinfo, info);
  png_destroy_read_struct(&png, &pinfo, NULL);
  return 0;
}

int ti_png_decode_rows(const unsigned char *data, size_t size, int y0, int y1, unsigned char *out, char *error) {
  unsigned char *row = NULL;
  TI_PNG_BEGIN(error)
  ti_png_info info;
  ti_png_setup(png, pinfo, &info);
  if (y0 < 0 || y1 > info.height || y0 >= y1) {
    png_destroy_read_struct(&png, &pinfo, NULL);
    set_error(error, "rows outside the image");
    return -1;
  }
  size_t stride = png_get_rowbytes(png, pinfo);
  if (info.interlaced) {
    if (y0 != 0 || y1 != info.height) {
      png_destroy_read_struct(&png, &pinfo, NULL);
      set_error(error, "interlaced PNGs are decoded whole");
      return -1;
    }
    png_bytep *rows = (png_bytep *)malloc(sizeof(png_bytep) * (size_t)info.height);
    if (!rows) { png_destroy_read_struct(&png, &pinfo, NULL); set_error(error, "out of memory"); return -1; }
    for (int r = 0; r < info.height; r++) rows[r] = out + (size_t)r * stride;
    if (setjmp(perr.jump)) {
      set_error(error, perr.message[0] ? perr.message : "corrupt PNG data");
      free(rows);
      png_destroy_read_struct(&png, &pinfo, NULL);
      return -1;
    }
    png_read_image(png, rows);
    free(rows);
    png_destroy_read_struct(&png, &pinfo, NULL);
    return 0;
  }
  row = (unsigned char *)malloc(stride);
  if (!row) { png_destroy_read_struct(&png, &pinfo, NULL); set_error(error, "out of memory"); return -1; }
  if (setjmp(perr.jump)) {
    set_error(error, perr.message[0] ? perr.message : "corrupt PNG data");
    free(row);
    png_destroy_read_struct(&png, &pinfo, NULL);
    return -1;
  }
  for (int r = 0; r < y1; r++) {
    png_read_row(png, r >= y0 ? out + (size_t)(r - y0) * stride : row, NULL);
  }
  free(row);
  png_destroy_read_struct(&png, &pinfo, NULL);
  return 0;
}

int ti_png_write(const char *path, const unsigned char *pixels, int width, int height, int channels, char *error) {
  png_image image;
  memset(&image, 0, sizeof(image));
  image.version = PNG_IMAGE_VERSION;
  image.width = (png_uint_32)width;
  image.height = (png_uint_32)height;
  image.format = channels == 1 ? PNG_FORMAT_GRAY : channels == 2 ? PNG_FORMAT_GA : channels == 3 ? PNG_FORMAT_RGB : PNG_FORMAT_RGBA;
  if (!png_image_write_to_file(&image, path, 0, pixels, 0, NULL)) {
    set_error(error, image.message[0] ? image.message : "cannot write PNG");
    return -1;
  }
  return 0;
}

void ti_free(void *p) { free(p); }
