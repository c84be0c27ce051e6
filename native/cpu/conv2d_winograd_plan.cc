// The Winograd blocking plan (see conv2d_winograd_plan.h), shared by the fp32 and bf16 paths.
#include <cstdlib>

#include "conv2d_winograd_plan.h"

namespace dk::cpu::wino {
namespace {

// Scratch budgets in bytes: the transformed weights of one output-channel block (shared by the
// threads), and per thread the transformed inputs plus products of one work item.
int64_t budget(const char* env, int64_t dflt) {
  const char* s = std::getenv(env);  // tuning knob only
  const long long v = s ? std::atoll(s) : 0;
  return v > 0 ? int64_t(v) << 20 : dflt;
}

}  // namespace

Plan make_plan(const Conv2dParams& p, const Operands& o) {
  Plan pl;
  pl.g = o.g;
  pl.mr = o.mr;
  pl.nr = o.nr;
  const int64_t mr = o.mr, nr = o.nr, pts = o.g.points;
  pl.nt = dk::num_threads();
  pl.th = ceil_div(p.P, o.g.out);
  pl.tw = ceil_div(p.Q, o.g.out);
  pl.T = p.N * pl.th * pl.tw;
  pl.nkc = ceil_div(p.C, o.kc_cap);
  pl.kc = round_up(ceil_div(p.C, pl.nkc), 16);
  pl.apanel = o.apanel_bytes(pl.kc);

  const int64_t u_budget = budget("DIFFUSEKIT_WINO_U_MB", int64_t(24) << 20);
  const int64_t kb_cap = std::max(nr, u_budget / (pts * o.u_bytes * pl.nkc * pl.kc) / nr * nr);
  pl.nkb = ceil_div(p.K, kb_cap);
  pl.kb = round_up(ceil_div(p.K, pl.nkb), nr);
  pl.njp = pl.kb / nr;

  // Tiles per item from the per-thread budget; with few tiles, one tile block and the channels
  // split over the threads pads fewer GEMM rows than tile blocks rounded up to mr each.
  const int64_t t_budget = budget("DIFFUSEKIT_WINO_THREAD_MB", o.thread_mb << 20);
  int64_t tb = std::max(mr, t_budget / (pts * (o.v_bytes * pl.nkc * pl.kc + 4 * pl.kb)) / mr * mr);
  tb = std::min(tb, round_up(pl.T, mr));
  int64_t ntb = ceil_div(pl.T, tb);
  pl.nks = 1;
  if (ntb < 2 * pl.nt && pl.nt > 1) {
    const int64_t split_rows = pl.nt * round_up(ceil_div(pl.T, pl.nt), mr);
    if (pl.njp >= pl.nt && round_up(pl.T, mr) <= split_rows && round_up(pl.T, mr) <= tb * 2) {
      tb = round_up(pl.T, mr);
      pl.nks = pl.nt;
    } else {
      ntb = std::max<int64_t>(ntb, pl.nt);
      tb = round_up(ceil_div(pl.T, ntb), mr);
    }
  }
  pl.tb = tb;
  pl.ntb = ceil_div(pl.T, tb);
  pl.ntp = tb / mr;
  pl.kp = round_up(ceil_div(pl.kb, pl.nks), nr);
  pl.nks = ceil_div(pl.kb, pl.kp);
  pl.shared_v = pl.ntb == 1 && (pl.nkb > 1 || pl.nks > 1);
  pl.v_size = pts * pl.nkc * pl.ntp * pl.apanel;
  pl.m_size = tb * pts * pl.kp * 4;
  pl.u_size = pts * pl.nkc * pl.njp * pl.kc * nr * o.u_bytes;
  pl.wt_size = 9 * nr * pl.kc * o.u_bytes;
  return pl;
}

}  // namespace dk::cpu::wino
