#include "tessera_tiff.h"

#include <dlfcn.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>

// The few libtiff declarations used (libtiff 4.5+, soname 6: tdir_t is uint32_t).
typedef struct tiff TIFF;
typedef void (*TIFFErrorHandler)(const char *module, const char *fmt, va_list ap);

enum {
  TAG_SUBFILETYPE = 254, TAG_IMAGEWIDTH = 256, TAG_IMAGELENGTH = 257, TAG_BITSPERSAMPLE = 258, TAG_COMPRESSION = 259,
  TAG_PHOTOMETRIC = 262, TAG_IMAGEDESCRIPTION = 270, TAG_SAMPLESPERPIXEL = 277, TAG_ROWSPERSTRIP = 278,
  TAG_PLANARCONFIG = 284, TAG_TILEWIDTH = 322, TAG_TILELENGTH = 323, TAG_SUBIFD = 330, TAG_SAMPLEFORMAT = 339,
  TAG_JPEGTABLES = 347, TAG_YCBCRSUBSAMPLING = 530, TAG_JPEGQUALITY = 65537, TAG_JPEGCOLORMODE = 65538,
};

static struct {
  TIFF *(*Open)(const char *, const char *);
  void (*Close)(TIFF *);
  int (*GetField)(TIFF *, uint32_t, ...);
  int (*GetFieldDefaulted)(TIFF *, uint32_t, ...);
  int (*SetField)(TIFF *, uint32_t, ...);
  int (*SetDirectory)(TIFF *, uint32_t);
  int (*SetSubDirectory)(TIFF *, uint64_t);
  uint32_t (*NumberOfDirectories)(TIFF *);
  uint64_t (*CurrentDirOffset)(TIFF *);
  int (*IsTiled)(TIFF *);
  int (*IsBigTIFF)(TIFF *);
  int64_t (*TileSize)(TIFF *);
  int64_t (*StripSize)(TIFF *);
  uint32_t (*ComputeTile)(TIFF *, uint32_t, uint32_t, uint32_t, uint16_t);
  uint32_t (*ComputeStrip)(TIFF *, uint32_t, uint16_t);
  uint32_t (*NumberOfTiles)(TIFF *);
  uint32_t (*NumberOfStrips)(TIFF *);
  int64_t (*ReadEncodedTile)(TIFF *, uint32_t, void *, int64_t);
  int64_t (*ReadEncodedStrip)(TIFF *, uint32_t, void *, int64_t);
  int64_t (*ReadRawTile)(TIFF *, uint32_t, void *, int64_t);
  uint64_t (*GetStrileByteCount)(TIFF *, uint32_t);
  int64_t (*WriteEncodedTile)(TIFF *, uint32_t, void *, int64_t);
  int (*WriteDirectory)(TIFF *);
  TIFFErrorHandler (*SetErrorHandler)(TIFFErrorHandler);
  TIFFErrorHandler (*SetWarningHandler)(TIFFErrorHandler);
  int (*IsCODECConfigured)(uint16_t);
} lib;

static pthread_once_t load_once = PTHREAD_ONCE_INIT;
static char load_error[TI_TIFF_ERROR_SIZE];
static int loaded = 0;

// libtiff reports errors through a process-wide handler: the message goes to the calling thread's
// buffer (each thread works on its own handle), and is picked up by the call that failed.
static _Thread_local char last_error[TI_TIFF_ERROR_SIZE];

static void on_error(const char *module, const char *fmt, va_list ap) {
  char msg[TI_TIFF_ERROR_SIZE];
  vsnprintf(msg, sizeof msg, fmt, ap);
  snprintf(last_error, sizeof last_error, "%s%s%s", module ? module : "", module ? ": " : "", msg);
}

// Warnings are kept too: a loop in the IFD chain is only a warning to libtiff, an error here.
static _Thread_local char last_warning[TI_TIFF_ERROR_SIZE];

static void on_warning(const char *module, const char *fmt, va_list ap) {
  char msg[TI_TIFF_ERROR_SIZE];
  vsnprintf(msg, sizeof msg, fmt, ap);
  snprintf(last_warning, sizeof last_warning, "%s%s%s", module ? module : "", module ? ": " : "", msg);
}

static void set_error(char *error, const char *msg) {
  if (error) {
    strncpy(error, msg, TI_TIFF_ERROR_SIZE - 1);
    error[TI_TIFF_ERROR_SIZE - 1] = 0;
  }
}

static void lib_error(char *error, const char *fallback) { set_error(error, last_error[0] ? last_error : fallback); }

static void load(void) {
  void *h = dlopen("libtiff.so.6", RTLD_NOW | RTLD_LOCAL);
  if (!h) h = dlopen("libtiff.so", RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    snprintf(load_error, sizeof load_error,
             "libtiff.so.6 is not installed (TIFF support loads it at run time; Debian: apt-get install libtiff6)");
    return;
  }
#define SYM(field, name)                                                                                  \
  if (!(*(void **)&lib.field = dlsym(h, name))) {                                                         \
    snprintf(load_error, sizeof load_error, "libtiff.so.6 lacks %s (libtiff 4.5 or later is needed)", name); \
    return;                                                                                               \
  }
  SYM(Open, "TIFFOpen") SYM(Close, "TIFFClose") SYM(GetField, "TIFFGetField")
  SYM(GetFieldDefaulted, "TIFFGetFieldDefaulted") SYM(SetField, "TIFFSetField") SYM(SetDirectory, "TIFFSetDirectory")
  SYM(SetSubDirectory, "TIFFSetSubDirectory") SYM(NumberOfDirectories, "TIFFNumberOfDirectories")
  SYM(CurrentDirOffset, "TIFFCurrentDirOffset") SYM(IsTiled, "TIFFIsTiled") SYM(IsBigTIFF, "TIFFIsBigTIFF")
  SYM(TileSize, "TIFFTileSize") SYM(StripSize, "TIFFStripSize") SYM(ComputeTile, "TIFFComputeTile")
  SYM(ComputeStrip, "TIFFComputeStrip") SYM(NumberOfTiles, "TIFFNumberOfTiles") SYM(NumberOfStrips, "TIFFNumberOfStrips")
  SYM(ReadEncodedTile, "TIFFReadEncodedTile") SYM(ReadEncodedStrip, "TIFFReadEncodedStrip")
  SYM(ReadRawTile, "TIFFReadRawTile") SYM(GetStrileByteCount, "TIFFGetStrileByteCount")
  SYM(WriteEncodedTile, "TIFFWriteEncodedTile") SYM(WriteDirectory, "TIFFWriteDirectory")
  SYM(SetErrorHandler, "TIFFSetErrorHandler") SYM(SetWarningHandler, "TIFFSetWarningHandler")
  SYM(IsCODECConfigured, "TIFFIsCODECConfigured")
#undef SYM
  lib.SetErrorHandler(on_error);
  lib.SetWarningHandler(on_warning);
  loaded = 1;
}

int ti_tiff_load(char *error) {
  pthread_once(&load_once, load);
  if (!loaded) {
    set_error(error, load_error);
    return -1;
  }
  return 0;
}

int ti_tiff_codec_configured(int compression) {
  return loaded && lib.IsCODECConfigured((uint16_t)compression);
}

// libjpeg's errors jump back to the call that decodes; its warnings (corrupt data it decodes past)
// are ignored, as libtiff's JPEG codec does.
typedef struct {
  struct jpeg_error_mgr mgr;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
} jpeg_error;

static void jpeg_error_exit(j_common_ptr c) {
  jpeg_error *e = (jpeg_error *)c->err;
  (*c->err->format_message)(c, e->message);
  longjmp(e->jump, 1);
}

static void jpeg_quiet(j_common_ptr c, int level) {
  (void)c;
  (void)level;
}

struct ti_tiff {
  TIFF *tif;
  uint64_t current;  // offset of the directory read last
  // Direct JPEG decoding (ti_tiff_read_jpeg_part): one decompressor and buffers per handle, reused.
  struct jpeg_decompress_struct jpeg;
  jpeg_error jpeg_err;
  int jpeg_ready;
  unsigned char *raw, *row;
  size_t raw_cap, row_cap;
};

ti_tiff *ti_tiff_open(const char *path, char *error) {
  if (ti_tiff_load(error) != 0) return NULL;
  last_error[0] = 0;
  TIFF *tif = lib.Open(path, "rm");  // m: read through the file, not a memory map of all of it
  if (!tif) {
    lib_error(error, "not a TIFF file");
    return NULL;
  }
  ti_tiff *t = calloc(1, sizeof *t);
  if (!t) {
    lib.Close(tif);
    set_error(error, "out of memory");
    return NULL;
  }
  t->tif = tif;
  t->current = 0;  // the first read selects its directory (and sets JPEG's RGB output)
  return t;
}

void ti_tiff_close(ti_tiff *t) {
  if (!t) return;
  lib.Close(t->tif);
  if (t->jpeg_ready) jpeg_destroy_decompress(&t->jpeg);
  free(t->raw);
  free(t->row);
  free(t);
}

int ti_tiff_is_bigtiff(ti_tiff *t) { return lib.IsBigTIFF(t->tif); }

static void read_dir(TIFF *tif, ti_tiff_dir *d) {
  uint32_t u32 = 0;
  uint16_t u16 = 0, v16 = 0;
  memset(d, 0, sizeof *d);
  d->offset = lib.CurrentDirOffset(tif);
  lib.GetField(tif, TAG_IMAGEWIDTH, &u32); d->width = u32; u32 = 0;
  lib.GetField(tif, TAG_IMAGELENGTH, &u32); d->height = u32; u32 = 0;
  d->tiled = lib.IsTiled(tif);
  if (d->tiled) {
    lib.GetField(tif, TAG_TILEWIDTH, &u32); d->tile_width = u32; u32 = 0;
    lib.GetField(tif, TAG_TILELENGTH, &u32); d->tile_height = u32; u32 = 0;
  } else {
    d->tile_width = d->width;
    u32 = d->height;
    lib.GetFieldDefaulted(tif, TAG_ROWSPERSTRIP, &u32);
    d->tile_height = u32 == 0 || u32 > d->height ? d->height : u32;
    u32 = 0;
  }
  u16 = 1; lib.GetFieldDefaulted(tif, TAG_BITSPERSAMPLE, &u16); d->bits = u16;
  u16 = 1; lib.GetFieldDefaulted(tif, TAG_SAMPLESPERPIXEL, &u16); d->samples = u16;
  u16 = 1; lib.GetFieldDefaulted(tif, TAG_SAMPLEFORMAT, &u16); d->sample_format = u16;
  u16 = 1; lib.GetFieldDefaulted(tif, TAG_PLANARCONFIG, &u16); d->planar = u16;
  u16 = 0; if (lib.GetField(tif, TAG_PHOTOMETRIC, &u16)) d->photometric = u16; else d->photometric = -1;
  u16 = 1; lib.GetFieldDefaulted(tif, TAG_COMPRESSION, &u16); d->compression = u16;
  u32 = 0; lib.GetFieldDefaulted(tif, TAG_SUBFILETYPE, &u32); d->subfile_type = u32;
  u16 = 0; uint64_t *offs = NULL;
  if (lib.GetField(tif, TAG_SUBIFD, &u16, &offs)) d->n_subifds = u16;
  u16 = 2; v16 = 2;
  if (d->photometric == 6) lib.GetFieldDefaulted(tif, TAG_YCBCRSUBSAMPLING, &u16, &v16);
  d->ycbcr_h = u16; d->ycbcr_v = v16;
}

// Selects a directory by offset and sets what reading it needs (JPEG's RGB output).
static int select_dir(ti_tiff *t, const ti_tiff_dir *d, char *error) {
  if (t->current != d->offset) {
    last_error[0] = 0;
    if (!lib.SetSubDirectory(t->tif, d->offset)) {
      lib_error(error, "cannot read the directory");
      t->current = 0;
      return -1;
    }
    t->current = d->offset;
    if (d->compression == 7 && d->photometric == 6) lib.SetField(t->tif, TAG_JPEGCOLORMODE, 1);
  }
  return 0;
}

int ti_tiff_list(ti_tiff *t, ti_tiff_dir *out, int max, char *error) {
  last_error[0] = 0;
  last_warning[0] = 0;
  uint32_t pages = lib.NumberOfDirectories(t->tif);  // stops at a loop in the IFD chain
  if (last_error[0]) {  // a next-IFD offset past the end: the chain is damaged
    lib_error(error, "damaged directory chain");
    return -1;
  }
  if (strstr(last_warning, "loop") || strstr(last_warning, "Loop")) {
    snprintf(error, TI_TIFF_ERROR_SIZE, "the chain of image directories loops (%s)", last_warning);
    return -1;
  }
  int n = 0;
  for (uint32_t p = 0; p < pages && n < max; p++) {
    if (!lib.SetDirectory(t->tif, p)) {
      lib_error(error, "cannot read a directory");
      t->current = 0;
      return -1;
    }
    ti_tiff_dir d;
    read_dir(t->tif, &d);
    d.page = (int)p;
    out[n++] = d;
    if (d.n_subifds > 0) {
      uint16_t count = 0;
      uint64_t *offs = NULL;
      if (!lib.GetField(t->tif, TAG_SUBIFD, &count, &offs) || !offs) continue;
      uint64_t copy[64];
      int c = count < 64 ? count : 64;
      memcpy(copy, offs, sizeof(uint64_t) * (size_t)c);
      for (int i = 0; i < c && n < max; i++) {
        if (!lib.SetSubDirectory(t->tif, copy[i])) {
          lib_error(error, "cannot read a SubIFD");
          t->current = 0;
          return -1;
        }
        read_dir(t->tif, &out[n]);
        out[n].is_subifd = 1;
        out[n].page = (int)p;
        n++;
      }
      lib.SetDirectory(t->tif, p);
    }
  }
  t->current = lib.CurrentDirOffset(t->tif);
  // The current directory must be re-selected (and its JPEG mode set) before reading.
  t->current = 0;
  return n;
}

int ti_tiff_read_block(ti_tiff *t, const ti_tiff_dir *d, uint32_t bx, uint32_t by, unsigned char *out, size_t size,
                       char *error) {
  if (select_dir(t, d, error) != 0) return -1;
  int jpeg_rgb = d->compression == 7 && d->photometric == 6;
  int samples = jpeg_rgb ? 3 : d->samples, bytes = d->bits / 8;
  size_t need = (size_t)d->tile_width * d->tile_height * (size_t)samples * (size_t)bytes;
  if (size < need) {
    set_error(error, "block buffer too small");
    return -1;
  }
  // Edge strips decode short: what they do not fill is zero.
  if (!d->tiled || d->planar == 2) memset(out, 0, need);
  int planes = d->planar == 2 ? samples : 1;
  size_t plane_bytes = (size_t)d->tile_width * d->tile_height * (size_t)bytes * (size_t)(planes == 1 ? samples : 1);
  int64_t lib_size = d->tiled ? lib.TileSize(t->tif) : lib.StripSize(t->tif);
  if (lib_size <= 0) {
    lib_error(error, "the directory has no data size");
    return -1;
  }
  size_t buf_size = (size_t)lib_size > plane_bytes ? (size_t)lib_size : plane_bytes;
  unsigned char *buf = planes == 1 && (size_t)lib_size <= need ? out : malloc(buf_size);
  if (!buf) {
    set_error(error, "out of memory");
    return -1;
  }
  for (int s = 0; s < planes; s++) {
    last_error[0] = 0;
    int64_t got;
    if (d->tiled) {
      uint32_t index = lib.ComputeTile(t->tif, bx * d->tile_width, by * d->tile_height, 0, (uint16_t)s);
      got = lib.ReadEncodedTile(t->tif, index, buf, (int64_t)buf_size);
    } else {
      uint32_t index = lib.ComputeStrip(t->tif, by * d->tile_height, (uint16_t)s);
      got = lib.ReadEncodedStrip(t->tif, index, buf, (int64_t)buf_size);
    }
    if (got < 0) {
      lib_error(error, "cannot decode the block");
      if (buf != out) free(buf);
      return -1;
    }
    if (planes == 1) {
      if (buf != out) memcpy(out, buf, need < (size_t)got ? need : (size_t)got);
    } else {
      // Separate planes: interleave plane s into the output.
      size_t px = (size_t)d->tile_width * d->tile_height, avail = (size_t)got / (size_t)bytes;
      for (size_t i = 0; i < px && i < avail; i++)
        memcpy(out + (i * (size_t)samples + (size_t)s) * (size_t)bytes, buf + i * (size_t)bytes, (size_t)bytes);
    }
  }
  if (buf != out) free(buf);
  return 0;
}

static int grow(unsigned char **buf, size_t *cap, size_t need) {
  if (*cap >= need) return 0;
  unsigned char *b = realloc(*buf, need);
  if (!b) return -1;
  *buf = b;
  *cap = need;
  return 0;
}

int ti_tiff_read_jpeg_part(ti_tiff *t, const ti_tiff_dir *d, uint32_t bx, uint32_t by, uint32_t x0, uint32_t y0,
                           uint32_t x1, uint32_t y1, unsigned char *out, char *error) {
  int samples = d->photometric == 6 ? 3 : d->samples;
  if (!d->tiled || d->compression != 7 || d->bits != 8 || d->planar != 1 || (samples != 1 && samples != 3)) {
    set_error(error, "not a directory of 8-bit gray or RGB JPEG tiles");
    return -1;
  }
  if (x0 >= x1 || y0 >= y1 || x1 > d->tile_width || y1 > d->tile_height) {
    set_error(error, "the part is not inside the tile");
    return -1;
  }
  if (select_dir(t, d, error) != 0) return -1;
  uint32_t index = lib.ComputeTile(t->tif, bx * d->tile_width, by * d->tile_height, 0, 0);
  if (index >= lib.NumberOfTiles(t->tif)) {
    set_error(error, "the tile is outside the directory");
    return -1;
  }
  last_error[0] = 0;
  uint64_t count = lib.GetStrileByteCount(t->tif, index);
  if (count == 0 || count > ((uint64_t)1 << 28)) {
    lib_error(error, count == 0 ? "the tile has no data" : "the tile's byte count is over 256 MiB");
    return -1;
  }
  if (grow(&t->raw, &t->raw_cap, (size_t)count) != 0) {
    set_error(error, "out of memory");
    return -1;
  }
  int64_t got = lib.ReadRawTile(t->tif, index, t->raw, (int64_t)count);
  if (got <= 0) {
    lib_error(error, "cannot read the tile's bytes");
    return -1;
  }
  uint32_t table_bytes = 0;
  void *tables = NULL;
  if (!lib.GetField(t->tif, TAG_JPEGTABLES, &table_bytes, &tables)) table_bytes = 0;

  struct jpeg_decompress_struct *c = &t->jpeg;
  if (!t->jpeg_ready) {
    c->err = jpeg_std_error(&t->jpeg_err.mgr);
    t->jpeg_err.mgr.error_exit = jpeg_error_exit;
    t->jpeg_err.mgr.emit_message = jpeg_quiet;
    jpeg_create_decompress(c);
    t->jpeg_ready = 1;
  }
  if (setjmp(t->jpeg_err.jump)) {
    jpeg_abort_decompress(c);
    snprintf(error, TI_TIFF_ERROR_SIZE, "cannot decode the JPEG tile: %s", t->jpeg_err.message);
    return -1;
  }
  if (tables && table_bytes > 0) {
    jpeg_mem_src(c, tables, table_bytes);
    if (jpeg_read_header(c, FALSE) != JPEG_HEADER_TABLES_ONLY) {
      jpeg_abort_decompress(c);
      set_error(error, "the directory's JPEGTables are not a tables-only JPEG stream");
      return -1;
    }
  }
  jpeg_mem_src(c, t->raw, (unsigned long)got);
  jpeg_read_header(c, TRUE);
  if (c->num_components != samples || c->image_width < x1 || c->image_height < y1) {
    jpeg_abort_decompress(c);
    snprintf(error, TI_TIFF_ERROR_SIZE, "the tile's JPEG stream (%u×%u, %d components) does not match the directory",
             c->image_width, c->image_height, c->num_components);
    return -1;
  }
  // Colour as libtiff's JPEG codec decodes it: YCbCr → RGB, RGB and gray as stored.
  c->jpeg_color_space = d->photometric == 6 ? JCS_YCbCr : samples == 3 ? JCS_RGB : JCS_GRAYSCALE;
  c->out_color_space = samples == 3 ? JCS_RGB : JCS_GRAYSCALE;
  jpeg_start_decompress(c);
  // Columns: cropped to whole iMCUs, one more on each side where there is one, so that fancy
  // upsampling at the crop's edges has the neighbours it has in the whole tile.
  JDIMENSION margin = (JDIMENSION)(c->max_h_samp_factor * c->min_DCT_scaled_size);
  JDIMENSION xoff = x0 > margin ? x0 - margin : 0;
  JDIMENSION width = (x1 + margin < c->output_width ? x1 + margin : c->output_width) - xoff;
  if (xoff > 0 || width < c->output_width) jpeg_crop_scanline(c, &xoff, &width);
  if (y0 > 0 && jpeg_skip_scanlines(c, y0) != y0) {
    jpeg_abort_decompress(c);
    set_error(error, "the tile's JPEG stream ends early");
    return -1;
  }
  if (grow(&t->row, &t->row_cap, (size_t)c->output_width * (size_t)samples) != 0) {
    jpeg_abort_decompress(c);
    set_error(error, "out of memory");
    return -1;
  }
  size_t line = (size_t)(x1 - x0) * (size_t)samples, skip = (size_t)(x0 - xoff) * (size_t)samples;
  for (uint32_t y = y0; y < y1; y++) {
    JSAMPROW r = t->row;
    if (jpeg_read_scanlines(c, &r, 1) != 1) {
      jpeg_abort_decompress(c);
      set_error(error, "the tile's JPEG stream ends early");
      return -1;
    }
    memcpy(out + (size_t)(y - y0) * line, t->row + skip, line);
  }
  jpeg_abort_decompress(c);  // the rows below y1 are never decoded
  return 0;
}

/* ---------------------------------------------------------------- writing */

struct ti_tiff_writer {
  TIFF *tif;
  uint32_t tile;
  int samples;
};

ti_tiff_writer *ti_tiff_writer_open(const char *path, int bigtiff, char *error) {
  if (ti_tiff_load(error) != 0) return NULL;
  last_error[0] = 0;
  TIFF *tif = lib.Open(path, bigtiff ? "w8" : "w");
  if (!tif) {
    lib_error(error, "cannot create the file");
    return NULL;
  }
  ti_tiff_writer *w = calloc(1, sizeof *w);
  if (!w) {
    lib.Close(tif);
    set_error(error, "out of memory");
    return NULL;
  }
  w->tif = tif;
  return w;
}

int ti_tiff_writer_begin(ti_tiff_writer *w, uint32_t width, uint32_t height, int samples, uint32_t tile,
                         int compression, int quality, int reduced, const char *description, char *error) {
  TIFF *tif = w->tif;
  last_error[0] = 0;
  int ok = lib.SetField(tif, TAG_IMAGEWIDTH, width) && lib.SetField(tif, TAG_IMAGELENGTH, height) &&
           lib.SetField(tif, TAG_BITSPERSAMPLE, 8) && lib.SetField(tif, TAG_SAMPLESPERPIXEL, samples) &&
           lib.SetField(tif, TAG_PLANARCONFIG, 1) && lib.SetField(tif, TAG_TILEWIDTH, tile) &&
           lib.SetField(tif, TAG_TILELENGTH, tile) && lib.SetField(tif, TAG_COMPRESSION, compression);
  if (ok && reduced) ok = lib.SetField(tif, TAG_SUBFILETYPE, (uint32_t)1);
  if (ok && description) ok = lib.SetField(tif, TAG_IMAGEDESCRIPTION, description);
  if (ok) {
    if (compression == 7) {
      ok = lib.SetField(tif, TAG_JPEGQUALITY, quality);
      if (ok && samples == 3)
        ok = lib.SetField(tif, TAG_PHOTOMETRIC, 6) && lib.SetField(tif, TAG_JPEGCOLORMODE, 1);
      else if (ok)
        ok = lib.SetField(tif, TAG_PHOTOMETRIC, 1);
    } else {
      ok = lib.SetField(tif, TAG_PHOTOMETRIC, samples == 3 ? 2 : 1);
    }
  }
  if (!ok) {
    lib_error(error, "cannot set the directory's tags");
    return -1;
  }
  w->tile = tile;
  w->samples = samples;
  return 0;
}

int ti_tiff_writer_tile(ti_tiff_writer *w, uint32_t tx, uint32_t ty, const unsigned char *pixels, char *error) {
  last_error[0] = 0;
  uint32_t index = lib.ComputeTile(w->tif, tx * w->tile, ty * w->tile, 0, 0);
  int64_t n = (int64_t)w->tile * w->tile * w->samples;
  if (lib.WriteEncodedTile(w->tif, index, (void *)pixels, n) < 0) {
    lib_error(error, "cannot write a tile");
    return -1;
  }
  return 0;
}

int ti_tiff_writer_end(ti_tiff_writer *w, char *error) {
  last_error[0] = 0;
  if (!lib.WriteDirectory(w->tif)) {
    lib_error(error, "cannot write the directory");
    return -1;
  }
  return 0;
}

int ti_tiff_writer_close(ti_tiff_writer *w, char *error) {
  (void)error;
  lib.Close(w->tif);
  free(w);
  return 0;
}
