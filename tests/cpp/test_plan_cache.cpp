// Torch-free tests of the plan cache and of checked size arithmetic:
//   * a plan holds no values: values changed after the plan was built are used by the next forward;
//   * PlanCache finds plans by content: same arrays -> hit; arrays changed in place (same pointers)
//     -> a new plan; equal content in other buffers -> hit; invalid arrays -> throws, not cached;
//     the cache stays bounded;
//   * filters with the same (channel, pattern) list in different CSR orders still compute right;
//   * the cache container's LRU policy (lru_cache.h), the transposed plan cache's bounds;
//   * conv_out_size / check_shape reject overflowing sizes; plan_supports rejects huge slabs and
//     forward_f32 then runs the reference kernel (stride 2048 matches the dense conv);
//   * a process forked while another thread holds a cache's lock can use the cache (no deadlock).
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <stdexcept>
#include <thread>

#include "csrc/kernels/backward.h"
#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/plan.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

// Every ISA path (with and without a cached plan) against the dense conv of w.
bool all_paths_match(const ConvShape& s, const Compressed& w, const ExecPlan* plan, uint64_t seed) {
  const auto x = random_input(s.batch * s.in_channels * s.in_h * s.in_w, seed);
  const auto bias = random_input(s.out_channels, seed + 1);
  const auto want = dense_conv(s, w.dense, x.data(), bias.data());
  bool ok = true;
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) continue;
    std::vector<float> got(want.size(), NAN);
    forward_f32(isa, s, w.view(), plan, x.data(), bias.data(), got.data(), threaded_for, 3);
    if (!(tolerance_ratio(got, want, 1e-5, 1e-5) <= 1.0)) {
      std::printf("  mismatch on %s\n", isa_name(isa));
      ok = false;
    }
  }
  return ok;
}

// Rebuilds w.dense from the compressed arrays (after an in-place edit of them).
void redensify(Compressed& w) {
  std::fill(w.dense.begin(), w.dense.end(), 0.0);
  for (int64_t o = 0; o < w.cout; ++o)
    for (int32_t k = w.filter_ptr[o]; k < w.filter_ptr[o + 1]; ++k)
      for (int64_t e = 0; e < w.entries; ++e)
        w.dense[(o * w.cin + w.kernel_channel[k]) * 9 + w.patterns[w.kernel_pattern[k] * w.entries + e]] +=
            w.values[k * w.entries + e];
}

void values_read_at_call_time(Counter& t) {
  Compressed w = random_weights(12, 10, 0.6, 4, 11);
  const ConvShape s = make_shape(2, 10, 9, 11, 12, 1, 1, 1);
  const auto plan = build_plan(w.view(), 10);
  t.check(all_paths_match(s, w, plan.get(), 1), "plan forward matches before a values change");
  for (auto& v : w.values) v = -2.f * v + 0.25f;
  redensify(w);
  t.check(all_paths_match(s, w, plan.get(), 2), "the same plan uses values changed after it was built");
}

void cache_by_content(Counter& t) {
  PlanCache cache(4);
  Compressed w = random_weights(8, 6, 0.7, 2, 21);
  const auto p1 = cache.get(w.view(), 6);
  const auto p2 = cache.get(w.view(), 6);
  auto st = cache.stats();
  t.check(p1 == p2 && st.builds == 1 && st.hits == 1 && st.size == 1, "same arrays: one build, then a hit");
  t.check(plan_matches(*p1, w.view(), 6) && !plan_matches(*p1, w.view(), 7), "plan_matches checks in_channels");

  // Equal content in other buffers: a hit, no build.
  const Compressed copy = w;
  const auto p3 = cache.get(copy.view(), 6);
  st = cache.stats();
  t.check(p3 == p1 && st.builds == 1 && st.hits == 2, "equal arrays elsewhere: a hit");

  // In-place change of the index arrays (same pointers, still valid): a new, matching plan.
  for (auto& c : w.kernel_channel) c = (c + 1) % 6;
  redensify(w);
  const auto p4 = cache.get(w.view(), 6);
  st = cache.stats();
  t.check(p4 != p1 && st.builds == 2 && plan_matches(*p4, w.view(), 6), "in-place kernel_channel change: rebuilt");
  const ConvShape s = make_shape(1, 6, 7, 8, 8, 1, 1, 1);
  t.check(all_paths_match(s, w, p4.get(), 3), "rebuilt plan computes the changed weight");
  w.kernel_pattern[0] = static_cast<uint8_t>((w.kernel_pattern[0] + 1) % w.num_patterns);
  const auto p5 = cache.get(w.view(), 6);
  t.check(p5 != p4 && cache.stats().builds == 3, "one changed kernel_pattern byte: rebuilt");
  // The original content again (other buffers): still cached.
  t.check(cache.get(copy.view(), 6) == p1 && cache.stats().builds == 3, "old content still cached");

  // A change of any single index byte is seen (group members other than the lead included).
  {
    Compressed c = random_weights(9, 6, 0.8, 3, 23);
    const auto plan = build_plan(c.view(), 6);
    bool all_seen = plan_matches(*plan, c.view(), 6);
    for (size_t k = 0; k < c.kernel_channel.size(); ++k) {
      c.kernel_pattern[k] ^= 1;
      all_seen = all_seen && !plan_matches(*plan, c.view(), 6);
      c.kernel_pattern[k] ^= 1;
      c.kernel_channel[k] ^= 1;
      all_seen = all_seen && !plan_matches(*plan, c.view(), 6);
      c.kernel_channel[k] ^= 1;
    }
    for (size_t o = 1; o + 1 < c.filter_ptr.size(); ++o) {
      c.filter_ptr[o] += 1;
      all_seen = all_seen && !plan_matches(*plan, c.view(), 6);
      c.filter_ptr[o] -= 1;
    }
    c.patterns[5] ^= 1;
    all_seen = all_seen && !plan_matches(*plan, c.view(), 6);
    c.patterns[5] ^= 1;
    t.check(all_seen && plan_matches(*plan, c.view(), 6), "plan_matches sees a change of any index entry");
  }

  // Invalid arrays throw and are not cached.
  Compressed bad = copy;
  bad.kernel_channel[0] = 6;
  bool threw = false;
  try { cache.get(bad.view(), 6); } catch (const std::invalid_argument&) { threw = true; }
  t.check(threw && cache.stats().builds == 3, "invalid arrays throw, nothing cached");

  // Bounded.
  for (int i = 0; i < 10; ++i) {
    const Compressed other = random_weights(3 + i, 5, 0.5, 1, 100 + i);
    cache.get(other.view(), 5);
  }
  t.check(cache.stats().size <= 4, "cache bounded by its capacity");
  cache.clear();
  t.check(cache.stats().size == 0, "clear empties the cache");
}

// Filters 0..3 share a (channel, pattern) list but filter 2 lists its kernels in another CSR order:
// the plan must not let it share run offsets with the others.
void group_with_other_order(Counter& t) {
  Compressed w = random_weights(4, 8, 0.8, 4, 31);
  const int32_t b = w.filter_ptr[2], e = w.filter_ptr[3];
  std::reverse(w.kernel_channel.begin() + b, w.kernel_channel.begin() + e);
  std::reverse(w.kernel_pattern.begin() + b, w.kernel_pattern.begin() + e);
  for (int32_t i = b, j = e - 1; i < j; ++i, --j)
    for (int64_t k = 0; k < w.entries; ++k) std::swap(w.values[i * w.entries + k], w.values[j * w.entries + k]);
  redensify(w);
  const auto plan = build_plan(w.view(), 8);
  const ConvShape s = make_shape(1, 8, 10, 10, 4, 1, 1, 1);
  t.check(all_paths_match(s, w, plan.get(), 4), "group members in different CSR orders");
  int64_t grouped = 0;
  for (const auto& g : plan->groups) grouped = std::max<int64_t>(grouped, g.size);
  t.check(e - b < 2 || grouped == 3, "the three filters in the same order still form one group");
}

void checked_sizes(Counter& t) {
  const int64_t big = (int64_t(1) << 62) - 1, max = INT64_MAX;
  t.check(conv_out_size(5, big, 1, 1) == -1 && conv_out_size(5, 0, max, 1) == -1 && conv_out_size(max, 1, 1, 1) == -1,
          "conv_out_size is -1 on overflow");
  t.check(conv_out_size(5, 0, big, 1) == 0, "conv_out_size with a huge dilation: kernel does not fit");
  t.check(conv_out_size(-1, 0, 1, 1) == -1 && conv_out_size(5, 0, 0, 1) == -1 && conv_out_size(5, 0, 1, 0) == -1,
          "conv_out_size rejects out-of-range arguments");
  ConvShape s = make_shape(1, 1, 5, 5, 1, 1, 0, 1);
  t.check(shape_ok(s) && plan_supports(s), "a small shape is valid and planned");
  s = make_shape(1, 1, 5, 5, 1, int64_t(1) << 32, 0, 1);
  t.check(shape_ok(s) && !plan_supports(s), "stride 2**32: valid shape, not planned");
  s = make_shape(1, 1, 5, 5, 1, 2048, 0, 1);
  t.check(shape_ok(s) && !plan_supports(s), "stride 2048: slab too big, not planned");
  s = make_shape(1, 1, 5, 5, 1, 1, big, big);
  t.check(!shape_ok(s) && !plan_supports(s), "padding = dilation = 2**62-1 rejected");
  s = make_shape(1, 1, 5, 5, 1, 1, int64_t(1) << 61, 1);
  t.check(!shape_ok(s), "output element count overflow rejected");

  // A rejected shape throws from forward_f32 on every path instead of running.
  Compressed w = random_weights(1, 1, 1.0, 1, 41);
  s = make_shape(1, 1, 5, 5, 1, 1, big, big);
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) continue;
    bool threw = false;
    float out = 0;
    try { forward_f32(isa, s, w.view(), nullptr, &out, nullptr, &out); } catch (const std::invalid_argument&) { threw = true; }
    t.check(threw, std::string("forward_f32 rejects an overflowing shape on ") + isa_name(isa));
  }
  bool threw = false;
  try {
    const auto plan = build_plan(w.view(), 1);
    float out = 0;
    plan_forward(*plan, portable_microkernels(), make_shape(1, 1, 5, 5, 1, 2048, 0, 1), w.values.data(), &out,
                 nullptr, &out);
  } catch (const std::invalid_argument&) { threw = true; }
  t.check(threw, "plan_forward rejects a shape plan_supports rejects");

  // Huge strides / paddings run the reference kernel and match the dense conv.
  Compressed w3 = random_weights(4, 3, 0.9, 2, 42);
  ConvShape a = make_shape(1, 3, 9, 11, 4, 2048, 0, 1);
  t.check(all_paths_match(a, w3, nullptr, 5), "stride 2048 matches the dense conv");
  a = make_shape(2, 3, 9, 11, 4, 3000, 1500, 1);
  t.check(all_paths_match(a, w3, nullptr, 6), "stride 3000, padding 1500 match the dense conv");
  a = make_shape(1, 3, 6, 7, 4, 1, 700, 600);
  t.check(a.out_h > 0 && all_paths_match(a, w3, nullptr, 7), "padding 700, dilation 600 match the dense conv");
}

// The one cache container (lru_cache.h): a hit moves an entry to the front, the least recently used
// entry goes first past either bound, the newest always stays, and what a caller got outlives its
// eviction. Then the transposed plan cache under a byte bound (it had only an entry bound).
void lru_policy(Counter& t) {
  LruCache<const int> cache(3, 100);
  std::vector<std::shared_ptr<const int>> v;
  for (int i = 0; i < 4; ++i) v.push_back(std::make_shared<const int>(i));
  cache.add(v[0], 10);
  cache.add(v[1], 10);
  cache.add(v[2], 10);
  t.check(cache.find([](int x) { return x == 0; }) == v[0], "lru: find returns the matching entry");
  cache.add(v[3], 10);  // 4 > 3 entries: evicts 1 (0 was used more recently)
  t.check(!cache.find([](int x) { return x == 1; }) && cache.find([](int x) { return x == 0; }),
          "lru: the least recently used entry is evicted first");
  const PlanCacheStats st = cache.stats();
  t.check(st.size == 3 && st.bytes == 30 && st.builds == 4 && st.hits == 2, "lru: stats count hits, builds, bytes");
  auto big = std::make_shared<const int>(9);
  cache.add(big, 1000);  // over the byte bound alone: everything older goes, the newest stays
  t.check(cache.stats().size == 1 && cache.find([](int x) { return x == 9; }) == big, "lru: the newest entry stays");
  t.check(*v[1] == 1, "lru: an evicted entry stays valid for its holder");
  cache.remove(big);
  t.check(cache.stats().size == 0 && cache.stats().bytes == 0, "lru: remove drops an entry and its bytes");

  Compressed a = random_weights(8, 6, 0.7, 1, 61), b = random_weights(8, 6, 0.7, 1, 62);
  const auto fa = build_plan(a.view(), 6), fb = build_plan(b.view(), 6);
  TransposedPlanCache tc(64, /*max_bytes=*/1);
  const auto ta = tc.get(fa);
  t.check(tc.get(fa) == ta, "transposed cache: the same forward plan hits");
  tc.get(fb);
  const PlanCacheStats ts = tc.stats();
  t.check(ts.size == 1 && ts.builds == 2 && ts.hits == 1, "transposed cache: bounded by bytes too");
  t.check(tc.get(fa) != ta && ta->forward == fa, "transposed cache: an evicted plan is rebuilt; the old one stays valid");
}

// fork() while another thread is inside a cache operation (holding its lock): the child must be able
// to use the cache. Without the fork handlers the child inherits the lock held and hangs.
void fork_while_locked(Counter& t) {
  LruCache<const int> cache(4);
  cache.add(std::make_shared<const int>(1), 1);
  std::atomic<bool> inside{false};
  std::thread holder([&] {
    cache.find([&](int) {
      inside = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(300));  // holds the lock meanwhile
      return false;
    });
  });
  while (!inside) std::this_thread::yield();
  const pid_t pid = fork();
  if (pid == 0) {
    cache.add(std::make_shared<const int>(2), 1);  // takes the lock
    _exit(cache.find([](int x) { return x == 2; }) ? 0 : 1);
  }
  holder.join();
  int status = -1;
  bool exited = false;
  for (int i = 0; i < 500 && !exited; ++i) {  // up to 5 s
    exited = waitpid(pid, &status, WNOHANG) == pid;
    if (!exited) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
  }
  t.check(exited && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "fork: a child forked while another thread held a cache lock uses the cache");
}

}  // namespace

int main() {
  Counter t;
  values_read_at_call_time(t);
  cache_by_content(t);
  group_with_other_order(t);
  checked_sizes(t);
  lru_policy(t);
  fork_while_locked(t);
  return t.finish("test_plan_cache");
}
