// The SIMD fake quantization kernels, written once over a vector type.
//
// Included only by the per-ISA translation units (fake_quant_avx2.cc,
// fake_quant_avx512.cc, fake_quant_neon.cc), INSIDE their anonymous
// namespace and after they define `struct V` (see fake_quant_avx2.cc for the
// interface). Everything here therefore has internal linkage and is compiled
// with that file's ISA flags only; no std:: template may be used here, or an
// instance compiled with AVX-512 could be picked by the linker for scalar
// code. No include guard on purpose; no #include either.
//
// Per element the operations, their order and their rounding are exactly
// those of fake_quant_scalar.cc (no implicit fused multiply-add: the files are
// built with -ffp-contract=off), so y and dx are bit-identical to the scalar
// kernels. The one exception computes the same numbers: the per-tensor
// forward's x / scale as three explicit multiply-adds that give the correctly
// rounded quotient (LevelMath::kFmaDivide; vdivps is the slowest instruction
// of the loop). Only the double sums of dmin/dmax are added in another order.

using F = V::F;
using M = V::M;
using D = V::D;
constexpr int kW = V::kWidth;

// One grid per lane; lanes of a partial channel block get a zero range.
struct RangeVec {
  F nmin, nmax, scale, inv_scale, quant_zero, inv_levels, recip_scale;
  M zero;  // min == max == 0
};

inline RangeVec Broadcast(const NudgedRange& r) {
  RangeVec v;
  v.nmin = V::Set1(r.nudged_min);
  v.nmax = V::Set1(r.nudged_max);
  v.scale = V::Set1(r.scale);
  v.inv_scale = V::Set1(r.inv_scale);
  v.quant_zero = V::Set1(r.quant_zero);
  v.inv_levels = V::Set1(r.inv_levels);
  v.recip_scale = V::Set1(r.recip_scale);
  v.zero = V::Lt(V::Zero(), V::Zero());  // all false
  return v;
}

// Transposes n <= kW consecutive NudgedRange structs into lanes.
inline RangeVec Transpose(const NudgedRange* r, int n) {
  alignas(64) float f[7][kW];
  for (int j = 0; j < kW; ++j) {
    const NudgedRange& g = r[j < n ? j : 0];
    const bool on = j < n;
    f[0][j] = on ? g.nudged_min : 0.0f;
    f[1][j] = on ? g.nudged_max : 0.0f;
    f[2][j] = on ? g.scale : 1.0f;
    f[3][j] = on ? g.inv_scale : 1.0f;
    f[4][j] = on ? g.quant_zero : 0.0f;
    f[5][j] = on ? g.inv_levels : 1.0f;
    f[6][j] = (on && !g.zero_range) ? 0.0f : 1.0f;
  }
  RangeVec v;
  v.nmin = V::Load(f[0]);
  v.nmax = V::Load(f[1]);
  v.scale = V::Load(f[2]);
  v.inv_scale = V::Load(f[3]);
  v.quant_zero = V::Load(f[4]);
  v.inv_levels = V::Load(f[5]);
  v.recip_scale = v.inv_scale;  // per channel: the forward multiplies by inv_scale
  v.zero = V::Lt(V::Zero(), V::Load(f[6]));
  return v;
}

// How the level u is computed: * inv_scale (TF per channel), / scale (TF
// per tensor), or / scale as the correctly rounded multiply-add sequence of
// NudgedRange::recip_scale (same quotient, see there).
enum class LevelMath { kMulInvScale, kDivide, kFmaDivide };

// clamp, then (c - nudged_min) / scale or * inv_scale: the level before
// rounding, u, as in the forward.
template <LevelMath kMath>
inline F Level(F x, const RangeVec& r) {
  const F c = V::ClampLo(V::ClampHi(x, r.nmax), r.nmin);
  const F shifted = V::Sub(c, r.nmin);
  if (kMath == LevelMath::kMulInvScale) return V::Mul(shifted, r.inv_scale);
  if (kMath == LevelMath::kDivide) return V::Div(shifted, r.scale);
  const F q = V::Mul(shifted, r.recip_scale);
  const F residual = V::NegMulAdd(q, r.scale, shifted);  // exact: shifted - q*scale
  return V::MulAdd(residual, r.recip_scale, q);
}

template <bool kDivide>
constexpr LevelMath kLevelMath =
    kDivide ? LevelMath::kDivide : LevelMath::kMulInvScale;

template <LevelMath kMath>
inline F Quantize(F x, const RangeVec& r) {
  const F t = V::Sub(Level<kMath>(x, r), r.quant_zero);
  return V::Mul(V::Floor(V::Add(t, V::Set1(0.5f))), r.scale);
}

// dx and this element's dmin/dmax terms; see fake_quant.h for the formulas.
template <bool kLearned, bool kDivide>
inline void Grad(F dy, F x, const RangeVec& r, F* dx, F* cmin, F* cmax) {
  const F one = V::Set1(1.0f);
  const F zero = V::Zero();
  const M inside = V::And(V::Ge(x, r.nmin), V::Le(x, r.nmax));
  F below = V::Select(V::Lt(x, r.nmin), one, zero);
  F above = V::Select(V::Gt(x, r.nmax), one, zero);
  if (kLearned) {
    const F t = V::Sub(Level<kLevelMath<kDivide>>(x, r), r.quant_zero);
    const F e = V::Sub(V::Floor(V::Add(t, V::Set1(0.5f))), t);
    const F w = V::Select(inside, V::Mul(e, r.inv_levels), zero);
    below = V::Sub(below, w);
    above = V::Add(above, w);
  }
  // Products, not selects: NaN/Inf dy propagate as in TF.
  *dx = V::Mul(dy, V::Select(inside, one, zero));
  *cmin = V::Mul(dy, below);
  *cmax = V::Mul(dy, above);
}

template <LevelMath kMath>
void ForwardLoop(const float* x, int64_t n, const RangeVec& r, float* y) {
  int64_t i = 0;
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const F a = Quantize<kMath>(V::Load(x + i), r);
    const F b = Quantize<kMath>(V::Load(x + i + kW), r);
    V::Store(y + i, a);
    V::Store(y + i + kW, b);
  }
  for (; i < n; i += kW) {
    const int m = (n - i < kW) ? static_cast<int>(n - i) : kW;
    V::StoreN(y + i, Quantize<kMath>(V::LoadN(x + i, m), r), m);
  }
}

template <bool kDivide>
void ForwardRow(const float* x, int64_t n, const NudgedRange& range,
                float* y) {
  if (range.zero_range) {
    for (int64_t i = 0; i < n; ++i) y[i] = 0.0f;
    return;
  }
  const RangeVec r = Broadcast(range);
  if (kDivide && range.fma_divide) {
    ForwardLoop<LevelMath::kFmaDivide>(x, n, r, y);
  } else {
    ForwardLoop<kLevelMath<kDivide>>(x, n, r, y);
  }
}

// Whether any lane adds to a clipped range gradient: x outside the nudged
// range, or a non-finite dy (whose product with 0 is NaN). The other lanes'
// terms are +-0, which leave a double sum that starts at +0 unchanged.
inline bool AddsToClippedRangeGradient(F dy, F x, const RangeVec& r) {
  const M outside = V::Or(V::Lt(x, r.nmin), V::Gt(x, r.nmax));
  return V::Any(V::Or(outside, V::IsNan(V::Sub(dy, dy))));
}

template <bool kLearned, bool kDivide>
void GradRow(const float* dy, const float* x, int64_t n,
             const NudgedRange& range, float* dx, double* dmin,
             double* dmax) {
  if (range.zero_range) {
    for (int64_t i = 0; i < n; ++i) dx[i] = dy[i];
    return;
  }
  const RangeVec r = Broadcast(range);
  // Two sets of accumulators hide the latency of the double adds.
  D min0 = V::AccZero(), max0 = V::AccZero();
  D min1 = V::AccZero(), max1 = V::AccZero();
  F g, cmin, cmax;
  int64_t i = 0;
  // The clipped mode skips the double adds (the loop's main cost) of vectors
  // whose terms are all zero: most activations lie inside their range.
  for (; i + 2 * kW <= n; i += 2 * kW) {
    const F dya = V::Load(dy + i), xa = V::Load(x + i);
    Grad<kLearned, kDivide>(dya, xa, r, &g, &cmin, &cmax);
    V::Store(dx + i, g);
    if (kLearned || AddsToClippedRangeGradient(dya, xa, r)) {
      V::AccAdd(&min0, cmin);
      V::AccAdd(&max0, cmax);
    }
    const F dyb = V::Load(dy + i + kW), xb = V::Load(x + i + kW);
    Grad<kLearned, kDivide>(dyb, xb, r, &g, &cmin, &cmax);
    V::Store(dx + i + kW, g);
    if (kLearned || AddsToClippedRangeGradient(dyb, xb, r)) {
      V::AccAdd(&min1, cmin);
      V::AccAdd(&max1, cmax);
    }
  }
  for (; i < n; i += kW) {
    const int m = (n - i < kW) ? static_cast<int>(n - i) : kW;
    Grad<kLearned, kDivide>(V::LoadN(dy + i, m), V::LoadN(x + i, m), r, &g,
                            &cmin, &cmax);
    V::StoreN(dx + i, g, m);
    // Zero-filled lanes are not always harmless (0 * NaN when the scale is 0).
    const M live = V::FirstLanesMask(m);
    V::AccAdd(&min0, V::Select(live, cmin, V::Zero()));
    V::AccAdd(&max0, V::Select(live, cmax, V::Zero()));
  }
  *dmin += V::AccSum(min0) + V::AccSum(min1);
  *dmax += V::AccSum(max0) + V::AccSum(max1);
}

// Channels last: vectorized across channels. The grids of up to
// kChunkChannels channels are transposed into lanes once per call (the
// zero-range test becomes one blend per vector, decided per channel, never a
// branch per element); then the rows are walked in memory order, each
// channel vector loading its grid and double accumulators from these small
// L1-resident arrays. Walking down the rows per channel vector instead (grid
// and sums in registers, strided memory) measured 1.5-2x slower.
constexpr int64_t kChunkChannels = 256;  // FakeQuantPlan::kMaxTileChannels
constexpr int64_t kChunkVectors = kChunkChannels / kW;

inline int LanesAt(int64_t channels, int64_t c) {
  return (channels - c < kW) ? static_cast<int>(channels - c) : kW;
}

void ForwardStrided(const float* x, int64_t rows, int64_t channels,
                    int64_t row_stride, const NudgedRange* ranges, float* y) {
  RangeVec grid[kChunkVectors];
  for (int64_t c0 = 0; c0 < channels; c0 += kChunkChannels) {
    const int64_t nc =
        (channels - c0 < kChunkChannels) ? channels - c0 : kChunkChannels;
    const int64_t full = nc / kW;  // vectors with all kW lanes
    const int tail = static_cast<int>(nc - full * kW);
    for (int64_t j = 0; j < full; ++j) grid[j] = Transpose(ranges + c0 + j * kW, kW);
    if (tail) grid[full] = Transpose(ranges + c0 + full * kW, tail);
    for (int64_t row = 0; row < rows; ++row) {
      const float* xr = x + row * row_stride + c0;
      float* yr = y + row * row_stride + c0;
      for (int64_t j = 0; j < full; ++j) {
        const F q = Quantize<LevelMath::kMulInvScale>(V::Load(xr + j * kW), grid[j]);
        V::Store(yr + j * kW, V::Select(grid[j].zero, V::Zero(), q));
      }
      if (tail) {
        const F q = Quantize<LevelMath::kMulInvScale>(V::LoadN(xr + full * kW, tail), grid[full]);
        V::StoreN(yr + full * kW, V::Select(grid[full].zero, V::Zero(), q),
                  tail);
      }
    }
  }
}

// One channel vector of one row of GradStrided; m live lanes.
template <bool kLearned, bool kFull>
inline void GradLanes(const float* dy, const float* x, const RangeVec& r,
                      int m, float* dx, D* sum_min, D* sum_max) {
  const F d = kFull ? V::Load(dy) : V::LoadN(dy, m);
  const F xv = kFull ? V::Load(x) : V::LoadN(x, m);
  F g, cmin, cmax;
  Grad<kLearned, false>(d, xv, r, &g, &cmin, &cmax);
  // Zero-range channels and unused lanes: dx = dy, no range gradient.
  g = V::Select(r.zero, d, g);
  if (kFull) {
    V::Store(dx, g);
  } else {
    V::StoreN(dx, g, m);
  }
  V::AccAdd(sum_min, V::Select(r.zero, V::Zero(), cmin));
  V::AccAdd(sum_max, V::Select(r.zero, V::Zero(), cmax));
}

template <bool kLearned>
void GradStrided(const float* dy, const float* x, int64_t rows,
                 int64_t channels, int64_t row_stride,
                 const NudgedRange* ranges, float* dx, double* dmin,
                 double* dmax) {
  RangeVec grid[kChunkVectors];
  D sum_min[kChunkVectors], sum_max[kChunkVectors];
  for (int64_t c0 = 0; c0 < channels; c0 += kChunkChannels) {
    const int64_t nc =
        (channels - c0 < kChunkChannels) ? channels - c0 : kChunkChannels;
    const int64_t full = nc / kW;
    const int tail = static_cast<int>(nc - full * kW);
    const int64_t nv = full + (tail ? 1 : 0);
    for (int64_t j = 0; j < nv; ++j) {
      grid[j] = Transpose(ranges + c0 + j * kW, LanesAt(nc, j * kW));
      sum_min[j] = V::AccZero();
      sum_max[j] = V::AccZero();
    }
    for (int64_t row = 0; row < rows; ++row) {
      const int64_t off = row * row_stride + c0;
      for (int64_t j = 0; j < full; ++j) {
        GradLanes<kLearned, true>(dy + off + j * kW, x + off + j * kW, grid[j],
                                  kW, dx + off + j * kW, &sum_min[j],
                                  &sum_max[j]);
      }
      if (tail) {
        GradLanes<kLearned, false>(dy + off + full * kW, x + off + full * kW,
                                   grid[full], tail, dx + off + full * kW,
                                   &sum_min[full], &sum_max[full]);
      }
    }
    for (int64_t j = 0; j < nv; ++j) {
      const int m = LanesAt(nc, j * kW);
      V::AccAddTo(sum_min[j], dmin + c0 + j * kW, m);
      V::AccAddTo(sum_max[j], dmax + c0 + j * kW, m);
    }
  }
}

// The table of this ISA.
const FakeQuantKernelTable kTable = {
    kIsa,
    &ForwardRow<true>,
    &ForwardRow<false>,
    &ForwardStrided,
    &GradRow<false, false>,
    &GradStrided<false>,
    &GradRow<true, true>,
    &GradRow<true, false>,
    &GradStrided<true>,
};
