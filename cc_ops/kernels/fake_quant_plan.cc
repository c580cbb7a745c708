#include "fake_quant_plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

namespace tfquant {
namespace kernels {

namespace {

std::string FormatFloat(float v) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.9g", static_cast<double>(v));
  return buf;
}

std::string ElementName(const char* name, int64_t i, bool per_channel) {
  return per_channel ? std::string(name) + "[" + std::to_string(i) + "]"
                     : std::string(name);
}

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace

std::string CheckNumBits(int64_t num_bits) {
  if (num_bits < kMinNumBits || num_bits > kMaxNumBits) {
    return "num_bits = " + std::to_string(num_bits) +
           " is not supported; allowed values are " +
           std::to_string(kMinNumBits) + ".." + std::to_string(kMaxNumBits);
  }
  return "";
}

std::string ResolveFakeQuantShape(const int64_t* dims, int rank, int min_rank,
                                  int64_t min_len, int max_rank,
                                  int64_t max_len, int64_t axis,
                                  FakeQuantShape* shape) {
  if (min_rank != max_rank || min_rank > 1) {
    return "min and max must both be scalars (per tensor) or both 1-D (per "
           "channel); got min of rank " +
           std::to_string(min_rank) + " and max of rank " +
           std::to_string(max_rank);
  }
  int64_t total = 1;
  for (int d = 0; d < rank; ++d) total *= dims[d];
  if (min_rank == 0) {
    *shape = FakeQuantShape{1, 1, total, false};
    return "";
  }
  if (rank == 0) {
    return "per-channel fake quant (1-D min/max) needs inputs of rank >= 1; "
           "got a scalar input";
  }
  if (axis < -rank || axis >= rank) {
    return "axis = " + std::to_string(axis) +
           " is out of range for inputs of rank " + std::to_string(rank) +
           "; allowed values are " + std::to_string(-rank) + ".." +
           std::to_string(rank - 1);
  }
  const int a = static_cast<int>(axis < 0 ? axis + rank : axis);
  const int64_t channels = dims[a];
  const std::pair<const char*, int64_t> lengths[] = {{"min", min_len},
                                                     {"max", max_len}};
  for (const auto& [name, len] : lengths) {
    if (len != channels) {
      return std::string(name) + " has " + std::to_string(len) +
             " elements but inputs dimension " + std::to_string(a) +
             " (axis " + std::to_string(axis) + ") has size " +
             std::to_string(channels) + "; they must be equal";
    }
  }
  FakeQuantShape s;
  s.per_channel = true;
  s.channels = channels;
  s.outer = 1;
  for (int d = 0; d < a; ++d) s.outer *= dims[d];
  s.inner = 1;
  for (int d = a + 1; d < rank; ++d) s.inner *= dims[d];
  *shape = s;
  return "";
}

std::string CheckRangeValues(const float* min, const float* max, int64_t n,
                             bool per_channel) {
  for (int64_t i = 0; i < n; ++i) {
    const std::string min_name = ElementName("min", i, per_channel);
    const std::string max_name = ElementName("max", i, per_channel);
    if (!std::isfinite(min[i])) {
      return min_name + " = " + FormatFloat(min[i]) + " is not finite";
    }
    if (!std::isfinite(max[i])) {
      return max_name + " = " + FormatFloat(max[i]) + " is not finite";
    }
    if (min[i] > max[i]) {
      return min_name + " = " + FormatFloat(min[i]) + " is greater than " +
             max_name + " = " + FormatFloat(max[i]) + "; min must be <= max";
    }
  }
  return "";
}

std::string ParseRangeGradient(const std::string& name, RangeGradient* mode) {
  if (name == "clipped") {
    *mode = RangeGradient::kClipped;
  } else if (name == "learned") {
    *mode = RangeGradient::kLearned;
  } else {
    return "range_gradient = '" + name +
           "' is not supported; allowed values are 'clipped' and 'learned'";
  }
  return "";
}

std::vector<NudgedRange> NudgeRanges(const float* min, const float* max,
                                     int64_t n, int num_bits,
                                     bool narrow_range) {
  std::vector<NudgedRange> ranges(static_cast<size_t>(n));
  const int qmin = QuantMin(narrow_range);
  const int qmax = QuantMax(num_bits);
  for (int64_t i = 0; i < n; ++i) {
    ranges[i] = NudgeRange(min[i], max[i], qmin, qmax);
  }
  return ranges;
}

void RunTilesSerially(int64_t num_tiles,
                      const std::function<void(int64_t, int64_t)>& fn) {
  if (num_tiles > 0) fn(0, num_tiles);
}

FakeQuantPlan::FakeQuantPlan(const FakeQuantShape& shape,
                             const FakeQuantKernelTable& kernels)
    : shape_(shape), kernels_(kernels) {
  if (shape_.num_elements() == 0) return;  // no tiles; range grads are 0
  strided_ = shape_.per_channel && shape_.inner == 1;
  // Long rows are cut into pieces; short rows are grouped by channel block
  // and then by outer block, so every tile holds about kTileElements.
  piece_len_ = std::min(shape_.inner, kTileElements);
  pieces_ = CeilDiv(shape_.inner, piece_len_);
  tile_channels_ = std::min({shape_.channels,
                             std::max<int64_t>(1, kTileElements / piece_len_),
                             kMaxTileChannels});
  channel_blocks_ = CeilDiv(shape_.channels, tile_channels_);
  tile_outer_ = std::min(
      shape_.outer,
      std::max<int64_t>(1, kTileElements / (tile_channels_ * piece_len_)));
  outer_blocks_ = CeilDiv(shape_.outer, tile_outer_);
  num_tiles_ = channel_blocks_ * outer_blocks_ * pieces_;
}

int64_t FakeQuantPlan::tile_elements() const {
  return tile_channels_ * tile_outer_ * piece_len_;
}

int64_t FakeQuantPlan::TileIndex(int64_t channel_block, int64_t outer_block,
                                 int64_t piece) const {
  return (channel_block * outer_blocks_ + outer_block) * pieces_ + piece;
}

FakeQuantPlan::Tile FakeQuantPlan::TileAt(int64_t t) const {
  const int64_t piece = t % pieces_;
  const int64_t outer_block = (t / pieces_) % outer_blocks_;
  const int64_t channel_block = t / (pieces_ * outer_blocks_);
  Tile tile;
  tile.outer_begin = outer_block * tile_outer_;
  tile.outer_end = std::min(shape_.outer, tile.outer_begin + tile_outer_);
  tile.channel_begin = channel_block * tile_channels_;
  tile.channel_end =
      std::min(shape_.channels, tile.channel_begin + tile_channels_);
  tile.inner_begin = piece * piece_len_;
  tile.inner_end = std::min(shape_.inner, tile.inner_begin + piece_len_);
  return tile;
}

void FakeQuantPlan::ForwardTile(int64_t t, const float* x,
                                const NudgedRange* ranges, float* y) const {
  const Tile tile = TileAt(t);
  const int64_t C = shape_.channels;
  if (strided_) {
    const int64_t off = tile.outer_begin * C + tile.channel_begin;
    kernels_.forward_strided_mul_inv_scale(
        x + off, tile.outer_end - tile.outer_begin,
        tile.channel_end - tile.channel_begin, C, ranges + tile.channel_begin,
        y + off);
    return;
  }
  // TF divides by the scale per tensor but multiplies by its inverse per
  // channel; the two differ in the last bit for some inputs.
  const FakeQuantRowFn row = shape_.per_channel
                                 ? kernels_.forward_row_mul_inv_scale
                                 : kernels_.forward_row_div_scale;
  const int64_t len = tile.inner_end - tile.inner_begin;
  for (int64_t o = tile.outer_begin; o < tile.outer_end; ++o) {
    for (int64_t c = tile.channel_begin; c < tile.channel_end; ++c) {
      const int64_t off = (o * C + c) * shape_.inner + tile.inner_begin;
      row(x + off, len, ranges[c], y + off);
    }
  }
}

void FakeQuantPlan::BackwardTile(int64_t t, const float* dy, const float* x,
                                 const NudgedRange* ranges, RangeGradient mode,
                                 float* dx, double* partials) const {
  const bool learned = mode == RangeGradient::kLearned;
  const Tile tile = TileAt(t);
  const int64_t C = shape_.channels;
  double* pmin = partials;
  double* pmax = partials + tile_channels_;
  std::fill(partials, partials + 2 * tile_channels_, 0.0);
  if (strided_) {
    const int64_t off = tile.outer_begin * C + tile.channel_begin;
    const FakeQuantGradStridedFn strided = learned
                                               ? kernels_.backward_strided_learned
                                               : kernels_.backward_strided;
    strided(dy + off, x + off,
                              tile.outer_end - tile.outer_begin,
                              tile.channel_end - tile.channel_begin, C,
                              ranges + tile.channel_begin, dx + off, pmin,
                              pmax);
    return;
  }
  // The learned gradient needs u exactly as the forward computed it.
  const FakeQuantGradRowFn row =
      !learned ? kernels_.backward_row
      : shape_.per_channel ? kernels_.backward_row_learned_mul_inv_scale
                           : kernels_.backward_row_learned_div_scale;
  const int64_t len = tile.inner_end - tile.inner_begin;
  for (int64_t o = tile.outer_begin; o < tile.outer_end; ++o) {
    for (int64_t c = tile.channel_begin; c < tile.channel_end; ++c) {
      const int64_t off = (o * C + c) * shape_.inner + tile.inner_begin;
      const int64_t j = c - tile.channel_begin;
      row(dy + off, x + off, len, ranges[c], dx + off,
                            &pmin[j], &pmax[j]);
    }
  }
}

void FakeQuantPlan::Forward(const float* x, const NudgedRange* ranges,
                            float* y, const TileRunner& run) const {
  run(num_tiles_, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) ForwardTile(t, x, ranges, y);
  });
}

void FakeQuantPlan::Backward(const float* dy, const float* x,
                             const NudgedRange* ranges, RangeGradient mode,
                             float* dx, float* dmin, float* dmax,
                             const TileRunner& run) const {
  const int64_t stride = 2 * tile_channels_;
  std::vector<double> partials(static_cast<size_t>(num_tiles_ * stride));
  run(num_tiles_, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      BackwardTile(t, dy, x, ranges, mode, dx, partials.data() + t * stride);
    }
  });
  // Fixed order: outer blocks, then pieces, whatever ran where.
  for (int64_t c = 0; c < shape_.channels; ++c) {
    double sum_min = 0.0, sum_max = 0.0;
    if (num_tiles_ > 0) {
      const int64_t cb = c / tile_channels_;
      const int64_t j = c % tile_channels_;
      for (int64_t ob = 0; ob < outer_blocks_; ++ob) {
        for (int64_t p = 0; p < pieces_; ++p) {
          const double* tp = partials.data() + TileIndex(cb, ob, p) * stride;
          sum_min += tp[j];
          sum_max += tp[tile_channels_ + j];
        }
      }
    }
    dmin[c] = static_cast<float>(sum_min);
    dmax[c] = static_cast<float>(sum_max);
  }
}

}  // namespace kernels
}  // namespace tfquant
