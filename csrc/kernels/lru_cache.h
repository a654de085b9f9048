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
// Thread-safe; checks too slow to run under the lock use candidates() then hit(). Torch-free.
#pragma once

#include <cstdint>
#include <list>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

namespace patsparse {

struct PlanCacheStats {
  int64_t hits = 0, builds = 0, size = 0, bytes = 0;
};

template <class Entry>
class LruCache {
 public:
  using Ptr = std::shared_ptr<Entry>;

  explicit LruCache(size_t max_entries, int64_t max_bytes = INT64_MAX)
      : max_entries_(max_entries), max_bytes_(max_bytes) {}

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
