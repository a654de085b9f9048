// The one container behind every plan / index cache (CPU plans, transposed plans, sparse indices,
// the ExecuTorch library's caches and the CUDA device plans), so they share one lifetime policy
// (docs/DESIGN.md "Plan caches"):
//   * an entry is immutable once added and handed out as a shared_ptr: a caller keeps what it got
//     even after the entry is evicted;
//   * entries die only by eviction: least recently used first, once there are more than
//     max_entries or they hold more than max_bytes (the newest entry always stays);
//   * the key is the caller's match predicate, and a hit must prove that the arrays the entry was
//     derived from equal the caller's (content, or an identity that cannot be reused plus a version
//     counter); an address alone never identifies an entry.
// Thread-safe; checks too slow to run under the lock use candidates() then hit(). Fork-safe: a
// process forked while another thread holds a cache's lock (DataLoader workers fork on Linux) would
// inherit it locked forever; fork waits for every cache's lock and releases them on both sides
// (pthread_atfork, ForkLocks). Torch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#endif

namespace patsparse {

// The locks of every live cache, taken before fork() and released after it in the parent and the
// child. One registry per binary (an inline function's static); never destroyed (a cache may be
// destroyed at exit after it).
class ForkLocks {
 public:
  static ForkLocks& get() {
    static ForkLocks* r = new ForkLocks();
    return *r;
  }
  void add(std::mutex* m) {
    std::lock_guard<std::mutex> lock(mu_);
    locks_.push_back(m);
  }
  void remove(std::mutex* m) {
    std::lock_guard<std::mutex> lock(mu_);
    locks_.erase(std::remove(locks_.begin(), locks_.end(), m), locks_.end());
  }

 private:
  ForkLocks() {
#if defined(__unix__) || defined(__APPLE__)
    pthread_atfork(&before_fork, &after_fork, &after_fork);
#endif
  }
  // A cache operation holds one cache lock at a time and calls nothing that takes another, so
  // taking them all in registry order cannot deadlock.
  static void before_fork() {
    ForkLocks& r = get();
    r.mu_.lock();
    for (std::mutex* m : r.locks_) m->lock();
  }
  static void after_fork() {
    ForkLocks& r = get();
    for (auto it = r.locks_.rbegin(); it != r.locks_.rend(); ++it) (*it)->unlock();
    r.mu_.unlock();
  }
  std::mutex mu_;
  std::vector<std::mutex*> locks_;
};

struct PlanCacheStats {
  int64_t hits = 0, builds = 0, size = 0, bytes = 0;
};

template <class Entry>
class LruCache {
 public:
  using Ptr = std::shared_ptr<Entry>;

  explicit LruCache(size_t max_entries, int64_t max_bytes = INT64_MAX)
      : max_entries_(max_entries), max_bytes_(max_bytes) {
    ForkLocks::get().add(&mu_);
  }
  ~LruCache() { ForkLocks::get().remove(&mu_); }
  LruCache(const LruCache&) = delete;
  LruCache& operator=(const LruCache&) = delete;

  // The most recently used entry with match(entry), counted as a hit and moved to the front; null
  // when none matches. match runs under the lock.
  template <class Match>
  Ptr find(Match&& match) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = slots_.begin(); it != slots_.end(); ++it) {
      if (!match(*it->entry)) continue;
      ++hits_;
      slots_.splice(slots_.begin(), slots_, it);
      return slots_.front().entry;
    }
    return nullptr;
  }

  // The entries with pick(entry), most recently used first (pick runs under the lock): the caller
  // confirms one outside the lock, then reports it with hit().
  template <class Pick>
  std::vector<Ptr> candidates(Pick&& pick) {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Ptr> out;
    for (const Slot& s : slots_)
      if (pick(*s.entry)) out.push_back(s.entry);
    return out;
  }

  // Counts a hit on `entry` and, if it is still cached, runs update(entry) under the lock (for a
  // mutable lookup hint; the rest of an entry never changes) and moves it to the front.
  template <class Update>
  void hit(const Ptr& entry, Update&& update) {
    std::lock_guard<std::mutex> lock(mu_);
    ++hits_;
    for (auto it = slots_.begin(); it != slots_.end(); ++it)
      if (it->entry == entry) {
        update(*entry);
        slots_.splice(slots_.begin(), slots_, it);
        break;
      }
  }
  void hit(const Ptr& entry) {
    hit(entry, [](Entry&) {});
  }

  // Adds a freshly built entry (counted as a build) at the front, then evicts past the bounds.
  void add(Ptr entry, int64_t bytes) {
    std::lock_guard<std::mutex> lock(mu_);
    ++builds_;
    slots_.push_front(Slot{std::move(entry), bytes});
    bytes_ += bytes;
    while (slots_.size() > 1 && (slots_.size() > max_entries_ || bytes_ > max_bytes_)) {
      bytes_ -= slots_.back().bytes;
      slots_.pop_back();
    }
  }

  // Drops `entry` (one that a check proved stale) if it is still cached.
  void remove(const Ptr& entry) {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = slots_.begin(); it != slots_.end(); ++it)
      if (it->entry == entry) {
        bytes_ -= it->bytes;
        slots_.erase(it);
        return;
      }
  }

  PlanCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {hits_, builds_, static_cast<int64_t>(slots_.size()), bytes_};
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mu_);
    slots_.clear();
    bytes_ = 0;
  }

 private:
  struct Slot {
    Ptr entry;
    int64_t bytes;
  };
  std::mutex mu_;
  std::list<Slot> slots_;  // most recently used first
  size_t max_entries_;
  int64_t max_bytes_, bytes_ = 0, hits_ = 0, builds_ = 0;
};

}  // namespace patsparse
