// The SeerNet layer's band driver and geometry (contract: seer_conv.h). The
// per-ISA part is the sparse dot alone; the predictor is the packed matmul.

#include "seer_conv.h"

#include <algorithm>
#include <cstring>

namespace tfquant {
namespace kernels {


namespace {

int64_t BandRows(const SeerConvGeometry& g) {
  const int64_t rows = std::max<int64_t>(1, 64 / g.wo);
  return std::max<int64_t>(g.pool, rows / g.pool * g.pool);
}

// Conv rows the output needs: the pool drops an odd last row.
int64_t NeededRows(const SeerConvGeometry& g) { return g.out_h() * g.pool; }

}  // namespace

const KernelFamily<SeerConvKernelTable>& SeerConvFamily() {
  static const KernelFamily<SeerConvKernelTable> family(
      {&ScalarSeerConvKernels(), Avx512SeerConvKernels()}, IsaSelection().level);
  return family;
}

std::string MakeSeerConvGeometry(int64_t batch, int64_t h, int64_t w,
                                 int64_t cin, int64_t kh, int64_t kw,
                                 int64_t cout, int64_t stride_h,
                                 int64_t stride_w, bool same_padding,
                                 int64_t pool, SeerConvGeometry* g) {
  if (batch < 0 || h < 1 || w < 1 || cin < 1) {
    return "x must be [batch, height, width, channels] with height, width and "
           "channels >= 1; got [" + std::to_string(batch) + ", " +
           std::to_string(h) + ", " + std::to_string(w) + ", " +
           std::to_string(cin) + "]";
  }
  if (kh < 1 || kw < 1 || cout < 1) {
    return "the kernel must be [kh, kw, cin, cout] with every size >= 1; got [" +
           std::to_string(kh) + ", " + std::to_string(kw) + ", " +
           std::to_string(cin) + ", " + std::to_string(cout) + "]";
  }
  if (stride_h < 1 || stride_w < 1) {
    return "strides must be >= 1; got (" + std::to_string(stride_h) + ", " +
           std::to_string(stride_w) + ")";
  }
  if (pool != 1 && pool != 2) {
    return "pool=" + std::to_string(pool) + " is not supported; allowed: 1 (none), "
           "2 (2x2 max-pool, stride 2)";
  }
  if (kh * kw * cin > (int64_t{1} << 24) || cout > (int64_t{1} << 20)) {
    return "the kernel is too large: kh*kw*cin=" + std::to_string(kh * kw * cin) +
           " (at most 2^24), cout=" + std::to_string(cout) + " (at most 2^20)";
  }
  SeerConvGeometry out;
  out.batch = batch, out.h = h, out.w = w, out.cin = cin;
  out.kh = kh, out.kw = kw, out.cout = cout;
  out.stride_h = stride_h, out.stride_w = stride_w, out.pool = pool;
  if (same_padding) {
    out.ho = CeilDiv(h, stride_h);
    out.wo = CeilDiv(w, stride_w);
    out.pad_top = std::max<int64_t>((out.ho - 1) * stride_h + kh - h, 0) / 2;
    out.pad_left = std::max<int64_t>((out.wo - 1) * stride_w + kw - w, 0) / 2;
  } else {
    if (kh > h || kw > w) {
      return "with VALID padding the kernel (" + std::to_string(kh) + "x" +
             std::to_string(kw) + ") must fit in the input (" + std::to_string(h) +
             "x" + std::to_string(w) + ")";
    }
    out.ho = (h - kh) / stride_h + 1;
    out.wo = (w - kw) / stride_w + 1;
  }
  // A band holds its padded input rows, patches and predictions in memory.
  const int64_t band_rows = BandRows(out);
  const int64_t band_elems =
      std::max(((band_rows - 1) * stride_h + kh) * ((out.wo - 1) * stride_w + kw) * cin,
               band_rows * out.wo * std::max(kh * kw * cin, cout));
  if (band_elems > (int64_t{1} << 26)) {
    return "the layer is too large for one band of output rows: " +
           std::to_string(band_elems) + " elements (at most 2^26)";
  }
  if (out.out_h() < 1 || out.out_w() < 1) {
    return "the 2x2 pool needs a convolution output of at least 2x2; got " +
           std::to_string(out.ho) + "x" + std::to_string(out.wo);
  }
  *g = out;
  return "";
}

void SeerConvFilterRows(const float* filter, int64_t k, int64_t cout,
                        float* filter_t) {
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t c = 0; c < cout; ++c) filter_t[c * k + i] = filter[i * cout + c];
  }
}

namespace {


// Scratch of one band, per thread and kept between calls (a band is about
// 64 pixels).
struct BandScratch {
  std::vector<float> rows, xs, pred;  // rows: the padded input rows
  std::vector<int8_t> rows_q, xq;     // rows_q: rows in int8; xq: the patches
  std::vector<int32_t> pixel_sums, xsum, pixels, channels;
  std::vector<uint16_t> selected;
  std::vector<int64_t> in_offset, out_offset;
};

// The padded input rows of conv rows [r0, r1) of image b, in float and int8
// (with per-pixel sums): rows_in x w_pad pixels of cin, zero outside x.
void PadRows(const SeerConvArgs& a, const SeerConvKernelTable& table, int64_t b,
             int64_t r0, int64_t r1, int64_t w_pad, BandScratch& s) {
  const SeerConvGeometry& g = a.g;
  const int64_t cin = g.cin;
  const int64_t rows_in = (r1 - r0 - 1) * g.stride_h + g.kh;
  s.rows.assign(rows_in * w_pad * cin, 0.0f);
  const int64_t col0 = -g.pad_left;  // image column of padded column 0
  const int64_t c_lo = std::max<int64_t>(0, -col0);
  const int64_t c_hi = std::min<int64_t>(w_pad, g.w - col0);  // padded columns inside x
  for (int64_t i = 0; i < rows_in; ++i) {
    const int64_t ih = r0 * g.stride_h - g.pad_top + i;
    if (ih < 0 || ih >= g.h || c_hi <= c_lo) continue;
    std::memcpy(s.rows.data() + (i * w_pad + c_lo) * cin,
                a.x + ((b * g.h + ih) * g.w + col0 + c_lo) * cin,
                (c_hi - c_lo) * cin * sizeof(float));
  }
  s.rows_q.resize(s.rows.size());
  s.pixel_sums.resize(rows_in * w_pad);
  table.quantize_pixels(s.rows.data(), rows_in * w_pad, cin, a.xs[b], s.rows_q.data(),
                        s.pixel_sums.data());
}

// The int8 patches of the band (rows of kpad, zero padded) and their sums,
// and where each pixel's window starts in the padded rows.
void GatherPatches(const SeerConvArgs& a, int64_t r0, int64_t r1, int64_t w_pad,
                   int64_t kpad, BandScratch& s) {
  const SeerConvGeometry& g = a.g;
  const int64_t row_len = g.kw * g.cin, pixels = (r1 - r0) * g.wo;
  s.xq.resize(pixels * kpad);
  s.xsum.resize(pixels);
  s.in_offset.resize(pixels);
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t pixel0 = (p / g.wo) * g.stride_h * w_pad + (p % g.wo) * g.stride_w;
    s.in_offset[p] = pixel0 * g.cin;
    int8_t* dst = s.xq.data() + p * kpad;
    int32_t sum = 0;
    for (int64_t i = 0; i < g.kh; ++i) {
      const int8_t* src = s.rows_q.data() + (pixel0 + i * w_pad) * g.cin;
      // A loop the compiler vectorizes: memcpy of a few dozen bytes is a
      // library call, which cost more than the predictor's matmul.
      for (int64_t v = 0; v < row_len; ++v) dst[i * row_len + v] = src[v];
      for (int64_t j = 0; j < g.kw; ++j) sum += s.pixel_sums[pixel0 + i * w_pad + j];
    }
    for (int64_t v = g.kh * row_len; v < kpad; ++v) dst[v] = 0;
    s.xsum[p] = sum;
  }
}

int64_t SeerConvBand(const SeerConvArgs& a, const SeerConvKernelTable& table,
                     int64_t b, int64_t r0, int64_t r1) {
  const SeerConvGeometry& g = a.g;
  const int64_t kk = g.patch_size(), cout = g.cout, wo = g.wo;
  const int64_t pixels = (r1 - r0) * wo;
  const int64_t w_pad = (wo - 1) * g.stride_w + g.kw;
  thread_local BandScratch s;

  PadRows(a, table, b, r0, r1, w_pad, s);
  PackedMatmulArgs m = MakePackedMatmulArgs(pixels, kk, cout, a.bits, 0);
  GatherPatches(a, r0, r1, w_pad, m.kpad, s);
  s.xs.assign(pixels, a.xs[b]);
  s.pred.resize(pixels * cout);
  m.xq = s.xq.data(), m.xs = s.xs.data(), m.xsum = s.xsum.data();
  m.packed = a.predictor, m.scales = a.predictor_scales, m.bias = a.bias;
  m.y = s.pred.data();
  PackedFamily().selected().matmul(m, 0, pixels, 0, CeilDiv(cout, kPackedNBlock));

  const int64_t cblocks = CeilDiv(cout, 16);
  s.selected.resize(pixels * cblocks);
  table.select(s.pred.data(), r1 - r0, wo, cout, g.pool, a.threshold, s.selected.data());
  s.pixels.resize(pixels * cout);
  s.channels.resize(pixels * cout);
  int64_t count = 0;
  for (int64_t p = 0; p < pixels; ++p) {
    for (int64_t cb = 0; cb < cblocks; ++cb) {
      for (uint32_t bits = s.selected[p * cblocks + cb]; bits != 0; bits &= bits - 1) {
        s.pixels[count] = static_cast<int32_t>(p);
        s.channels[count++] = static_cast<int32_t>(cb * 16 + __builtin_ctz(bits));
      }
    }
  }

  // Where each pixel's outputs go in y: its own place, or its window's.
  float* y = a.y + (b * g.out_h() + r0 / g.pool) * g.out_w() * cout;
  std::memset(y, 0, (r1 - r0) / g.pool * g.out_w() * cout * sizeof(float));
  s.out_offset.resize(pixels);
  for (int64_t p = 0; p < pixels; ++p) {
    const int64_t r = p / wo, col = p % wo;
    s.out_offset[p] = g.pool == 1 ? p * cout
                      : col / 2 < g.out_w() ? (r / 2 * g.out_w() + col / 2) * cout
                                            : 0;  // an odd last column: never selected
  }
  SparseDotArgs d;
  d.input = s.rows.data(), d.in_offset = s.in_offset.data();
  d.filter_t = a.filter_t, d.bias = a.bias;
  d.pixels = s.pixels.data(), d.channels = s.channels.data();
  d.out_offset = s.out_offset.data(), d.y = y;
  d.kh = g.kh, d.row_len = g.kw * g.cin, d.row_stride = w_pad * g.cin;
  table.sparse_dot(d, 0, count);
  if (s.rows.size() > (size_t{1} << 22)) s = BandScratch();  // a huge band's memory goes back
  return count;
}

}  // namespace

void SeerConvImageScale(const SeerConvArgs& a, const SeerConvKernelTable& table,
                        int64_t b) {
  const int64_t count = a.g.h * a.g.w * a.g.cin;
  a.xs[b] = ActivationScale(table.abs_max(a.x + b * count, count));
}

int64_t SeerConvTasks(const SeerConvGeometry& g) {
  return g.batch * CeilDiv(NeededRows(g), BandRows(g));
}

int64_t SeerConvTask(const SeerConvArgs& a, const SeerConvKernelTable& table,
                     int64_t t) {
  const int64_t band = BandRows(a.g), rows = NeededRows(a.g);
  const int64_t bands = CeilDiv(rows, band);
  const int64_t r0 = (t % bands) * band;
  return SeerConvBand(a, table, t / bands, r0, std::min(rows, r0 + band));
}

}  // namespace kernels
}  // namespace tfquant
