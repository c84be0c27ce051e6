// tile_layout_check: host-only check (no GPU needed) of the tile engine's shared-memory index
// math. It stores logical A/B tiles with the loaders' swizzled layouts, replays the kernel's
// ldmatrix row addresses (AFragAddr / BFragAddr from mma_tile.cuh) through a model of
// ldmatrix.x4 [.trans] as the PTX ISA defines it, and compares the fragments each lane gets with
// the mma.m16n8k16 operand layout. Also: bank-conflict freedom of every ldmatrix phase, the
// loaders' per-pass offsets, that the K-major tiles equal the wgmma 128-byte-swizzle layout
// (descriptor: 1024 B between 8-row groups, +32 B per k16 step), and the split-K choices at SD
// shapes. Build and run from the repository root:
//   nvcc -std=c++17 -I native -o /tmp/tile_layout_check native/cuda/lab/tile_layout_check.cu && /tmp/tile_layout_check
#include <cstdint>
#include <cstdio>
#include <vector>

#include "cuda/mma_tile.cuh"

namespace {

using dk::cuda::tile::AFragAddr;
using dk::cuda::tile::BFragAddr;
using dk::cuda::tile::kmajor_off;
using dk::cuda::tile::mnmajor_off;

int failures = 0;

void fail(const char* what, int a, int b, int c, int d) {
  if (failures < 20) std::printf("FAIL %s (%d %d %d %d)\n", what, a, b, c, d);
  ++failures;
}

// A tile: 128 (m) x 64 (k); B tile: 128 (n) x 64 (k). Values encode the logical coordinates.
uint16_t tag(int row, int k) { return static_cast<uint16_t>(row * 64 + k); }

uint32_t tile_off(bool k_major, int row, int k) {
  return k_major ? kmajor_off(row, k / 8) + (k % 8) * 2 : mnmajor_off<128>(k, row / 8) + (row % 8) * 2;
}

std::vector<uint16_t> store_tile(bool k_major) {
  std::vector<uint16_t> s(128 * 64, 0xffff);
  for (int r = 0; r < 128; ++r)
    for (int k = 0; k < 64; ++k) {
      const uint32_t off = tile_off(k_major, r, k);
      if (off % 2 || off / 2 >= s.size() || s[off / 2] != 0xffff) fail("tile store collision", r, k, off, k_major);
      else s[off / 2] = tag(r, k);
    }
  return s;
}

// ldmatrix.x4: lanes 8j..8j+7 give the rows of matrix j (8 consecutive b16 each). Without .trans
// lane t receives (row t/4, cols 2(t%4), 2(t%4)+1) of each matrix; with .trans the transposed
// pair (rows 2(t%4), 2(t%4)+1 of col t/4).
void ldmatrix_x4(const std::vector<uint16_t>& s, const uint32_t (&addr)[32], bool trans, uint16_t (&out)[32][4][2]) {
  for (int j = 0; j < 4; ++j) {
    // bank check: one 8-lane phase must touch 8 distinct 16-byte bank groups
    unsigned seen = 0;
    for (int i = 0; i < 8; ++i) {
      const unsigned grp = (addr[8 * j + i] >> 4) & 7;
      if (seen & (1u << grp)) fail("ldmatrix bank conflict", j, i, addr[8 * j + i], 0);
      seen |= 1u << grp;
      if (addr[8 * j + i] % 16) fail("ldmatrix address not 16B aligned", j, i, addr[8 * j + i], 0);
    }
    for (int t = 0; t < 32; ++t)
      for (int e = 0; e < 2; ++e) {
        int row, col;
        if (!trans) { row = t / 4; col = 2 * (t % 4) + e; }
        else { row = 2 * (t % 4) + e; col = t / 4; }
        out[t][j][e] = s[addr[8 * j + row] / 2 + col];
      }
  }
}

template <bool A_K, bool B_K>
void check_layout() {
  const std::vector<uint16_t> sa = store_tile(A_K), sb = store_tile(B_K);
  for (int warp = 0; warp < 8; ++warp) {
    const int wm = warp >> 2, wn = warp & 3;
    for (int k16 = 0; k16 < 4; ++k16) {
      for (int mi = 0; mi < 4; ++mi) {
        uint32_t addr[32];
        for (int lane = 0; lane < 32; ++lane) addr[lane] = AFragAddr<A_K>(lane, wm)(mi, k16);
        uint16_t f[32][4][2];
        ldmatrix_x4(sa, addr, !A_K, f);
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t4 = lane & 3, mb = wm * 64 + mi * 16, kb = k16 * 16;
          for (int reg = 0; reg < 4; ++reg)  // a0 (g,k) a1 (g+8,k) a2 (g,k+8) a3 (g+8,k+8)
            for (int e = 0; e < 2; ++e) {
              const int m = mb + g + (reg & 1) * 8, k = kb + 2 * t4 + e + (reg >> 1) * 8;
              if (f[lane][reg][e] != tag(m, k)) fail(A_K ? "A K-major fragment" : "A M-major fragment", warp, k16, mi, lane);
            }
        }
      }
      for (int pj = 0; pj < 2; ++pj) {
        uint32_t addr[32];
        for (int lane = 0; lane < 32; ++lane) addr[lane] = BFragAddr<B_K>(lane, wn)(pj, k16);
        uint16_t f[32][4][2];
        ldmatrix_x4(sb, addr, !B_K, f);
        for (int lane = 0; lane < 32; ++lane) {
          const int g = lane >> 2, t4 = lane & 3, kb = k16 * 16;
          for (int reg = 0; reg < 4; ++reg)  // r0,r1 = b0,b1 of n-tile 2pj; r2,r3 of n-tile 2pj+1
            for (int e = 0; e < 2; ++e) {
              const int n = wn * 32 + (2 * pj + (reg >> 1)) * 8 + g, k = kb + 2 * t4 + e + (reg & 1) * 8;
              if (f[lane][reg][e] != tag(n, k)) fail(B_K ? "B K-major fragment" : "B N-major fragment", warp, k16, pj, lane);
            }
        }
      }
    }
  }
}

void check_loader_passes() {
  for (int tid = 0; tid < 256; ++tid) {
    const int r = tid >> 3, c = tid & 7;
    for (int i = 0; i < 5; ++i)
      if (kmajor_off(r, c) + i * 32 * 128 != kmajor_off(r + 32 * i, c)) fail("K-major pass offset", tid, i, 0, 0);
    const int r2 = tid >> 4, c2 = tid & 15;
    for (int i = 0; i < 4; ++i)
      if (mnmajor_off<128>(r2, c2) + i * 16 * 256 != mnmajor_off<128>(r2 + 16 * i, c2)) fail("MN-major pass offset", tid, i, 0, 0);
  }
}

// wgmma reads a K-major SW128 operand at the canonical address start + (r/8)*SBO + (r%8)*128 +
// 2*k (k < 16 inside one instruction), then XORs address bits [4,7) with bits [7,10).
void check_wgmma_layout() {
  for (int k16 = 0; k16 < 4; ++k16)
    for (int r = 0; r < 160; ++r)
      for (int k = 0; k < 16; ++k) {
        const uint32_t start = 32u * k16;  // tile base is 1024-aligned: take it as 0
        const uint32_t canon = start + (r / 8) * 1024 + (r % 8) * 128 + 2 * k;
        const uint32_t hw = canon ^ (((canon >> 7) & 7) << 4);
        const int kk = 16 * k16 + k;
        const uint32_t ours = kmajor_off(r, kk / 8) + (kk % 8) * 2;
        if (hw != ours) fail("wgmma SW128 layout", k16, r, k, 0);
      }
}

}  // namespace

int main() {
  check_layout<true, true>();
  check_layout<true, false>();
  check_layout<false, true>();
  check_layout<false, false>();
  check_loader_passes();
  check_wgmma_layout();
  std::printf("split-K choices on 132 SMs (mma 128x128 / wgmma 128x160 tiles):\n");
  const int shapes[][3] = {{8192, 320, 320},  {8192, 1280, 320}, {8192, 320, 1280}, {2048, 640, 640},
                           {512, 1280, 1280}, {8192, 2560, 320}, {128, 1280, 11520}, {512, 1280, 11520},
                           {2048, 640, 5760}, {8192, 320, 2880}, {154, 768, 768},    {154, 3072, 768}};
  for (const auto& s : shapes) {
    const int kt = (s[2] + 63) / 64;
    const long long t1 = (long long)((s[0] + 127) / 128) * ((s[1] + 127) / 128);
    const long long t2 = (long long)((s[0] + 127) / 128) * ((s[1] + 159) / 160);
    std::printf("  M%-5d N%-5d K%-6d  mma tiles %4lld splits %2d | wgmma tiles %4lld splits %2d\n", s[0], s[1], s[2], t1,
                dk::cuda::tile::choose_splits(t1, kt, 132), t2, dk::cuda::tile::choose_splits(t2, kt, 132));
  }
  if (failures) {
    std::printf("tile_layout_check: %d FAILURES\n", failures);
    return 1;
  }
  std::printf("tile_layout_check: all layout checks passed\n");
  return 0;
}
