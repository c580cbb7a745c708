// Argument checks, layout and deterministic tiling for fake quantization.
// Shared by the TensorFlow op (which runs tiles on TF's intra-op pool) and the
// numpy entry point (which runs them serially), so both give the same bits.
//
// Layout: the input is viewed as [outer, channels, inner] with channels the
// quantization axis (per tensor: [1, 1, N]). Work is cut into tiles of about
// kTileElements elements whose boundaries depend only on the shape, never on
// the thread count. Each tile writes its own partial dmin/dmax sums (double),
// and the partials are added in tile order afterwards, so the range gradients
// are bitwise reproducible for any pool size.

#ifndef TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_PLAN_H_
#define TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_PLAN_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "fake_quant.h"

namespace tfquant {
namespace kernels {

// The input viewed as [outer, channels, inner].
struct FakeQuantShape {
  int64_t outer = 1, channels = 1, inner = 0;
  bool per_channel = false;
  int64_t num_elements() const { return outer * channels * inner; }
};

constexpr int kMinNumBits = 2;
constexpr int kMaxNumBits = 16;

// The checks below return "" when the arguments are valid, otherwise a
// message that names the offending value and what is allowed.
std::string CheckNumBits(int64_t num_bits);

// min_rank == max_rank == 0: per tensor (axis ignored); both 1: per channel
// along axis (negative counts from the end).
std::string ResolveFakeQuantShape(const int64_t* dims, int rank, int min_rank,
                                  int64_t min_len, int max_rank,
                                  int64_t max_len, int64_t axis,
                                  FakeQuantShape* shape);

// min/max hold n values (1 per tensor): finite and min <= max.
std::string CheckRangeValues(const float* min, const float* max, int64_t n,
                             bool per_channel);

// "clipped" or "learned"; returns "" and sets *mode, or an error message.
std::string ParseRangeGradient(const std::string& name, RangeGradient* mode);

std::vector<NudgedRange> NudgeRanges(const float* min, const float* max,
                                     int64_t n, int num_bits,
                                     bool narrow_range);

// Runs fn(begin, end) over tiles [0, num_tiles), possibly in parallel.
using TileRunner = std::function<void(
    int64_t num_tiles, const std::function<void(int64_t, int64_t)>& fn)>;

// Runs every tile on the calling thread.
void RunTilesSerially(int64_t num_tiles,
                      const std::function<void(int64_t, int64_t)>& fn);

class FakeQuantPlan {
 public:
  static constexpr int64_t kTileElements = 16384;
  static constexpr int64_t kMaxTileChannels = 256;

  FakeQuantPlan(const FakeQuantShape& shape,
                const FakeQuantKernelTable& kernels);

  int64_t num_tiles() const { return num_tiles_; }
  // Elements of a full tile (the thread pool's sharding unit).
  int64_t tile_elements() const;

  // ranges has shape.channels entries (1 per tensor).
  void Forward(const float* x, const NudgedRange* ranges, float* y,
               const TileRunner& run) const;
  // dmin/dmax have shape.channels entries (1 per tensor).
  void Backward(const float* dy, const float* x, const NudgedRange* ranges,
                RangeGradient mode, float* dx, float* dmin, float* dmax,
                const TileRunner& run) const;

 private:
  struct Tile {
    int64_t outer_begin, outer_end;
    int64_t channel_begin, channel_end;
    int64_t inner_begin, inner_end;
  };
  Tile TileAt(int64_t t) const;
  int64_t TileIndex(int64_t channel_block, int64_t outer_block,
                    int64_t piece) const;
  void ForwardTile(int64_t t, const float* x, const NudgedRange* ranges,
                   float* y) const;
  // partials: this tile's [tile_channels_ dmin | tile_channels_ dmax].
  void BackwardTile(int64_t t, const float* dy, const float* x,
                    const NudgedRange* ranges, RangeGradient mode, float* dx,
                    double* partials) const;

  FakeQuantShape shape_;
  const FakeQuantKernelTable& kernels_;
  bool strided_ = false;  // per channel with inner == 1 (channels last)
  int64_t piece_len_ = 0, pieces_ = 0;
  int64_t tile_channels_ = 1, channel_blocks_ = 0;
  int64_t tile_outer_ = 1, outer_blocks_ = 0;
  int64_t num_tiles_ = 0;
};

}  // namespace kernels
}  // namespace tfquant

#endif  // TFQUANT_CC_OPS_KERNELS_FAKE_QUANT_PLAN_H_
