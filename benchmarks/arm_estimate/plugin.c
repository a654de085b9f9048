// qemu-user TCG plugin for benchmarks/arm_estimate (an ESTIMATE tool, not a timer).
// Debian's qemu-user 7.2 loads plugins (-plugin), but no package ships qemu-plugin.h, so the few
// calls used here are declared below from QEMU's documented plugin API, version 1 (QEMU 6.0-8.1).
// The driver brackets regions with HINT instructions (NOPs on hardware and in qemu):
//   hint #40 .. hint #41  count the guest instructions executed in between (per translation block)
//   hint #42 .. hint #43  trace: write the encoding of every instruction executed in between
// Plugin args: out=FILE (counts and trace, text; default stderr), trace=1 (enable tracing).
// Output: "count N" per counted region, then "trace M" and M lines of 8 hex digits.
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- QEMU plugin API v1 (subset) ----
typedef uint64_t qemu_plugin_id_t;
typedef struct {
  const char *target_name;
  struct { int min; int cur; } version;
  bool system_emulation;
  union { struct { int smp_vcpus; int max_vcpus; } system; };
} qemu_info_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
void qemu_plugin_register_vcpu_insn_exec_cb(struct qemu_plugin_insn *insn, qemu_plugin_vcpu_udata_cb_t cb,
                                            enum qemu_plugin_cb_flags flags, void *userdata);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
__attribute__((visibility("default"))) int qemu_plugin_version = 1;
// ---- end of API subset ----

enum { COUNT_BEGIN = 40, COUNT_END = 41, TRACE_BEGIN = 42, TRACE_END = 43 };
static const uint32_t kHint = 0xD503201Fu;  // HINT #imm = kHint | imm << 5

static uint64_t executed;        // guest instructions, added per translation block on entry
static uint64_t count_start;
static bool tracing, trace_enabled;
static uint32_t *trace_buf;
static size_t trace_len, trace_cap;
static FILE *out;

static void on_marker(unsigned int vcpu, void *udata) {
  (void)vcpu;
  switch ((int)(uintptr_t)udata) {
    case COUNT_BEGIN: count_start = executed; break;
    case COUNT_END: fprintf(out, "count %llu\n", (unsigned long long)(executed - count_start)); break;
    case TRACE_BEGIN: tracing = true; trace_len = 0; break;
    case TRACE_END: tracing = false; break;
  }
}

static void on_insn(unsigned int vcpu, void *udata) {
  (void)vcpu;
  if (!tracing) return;
  if (trace_len == trace_cap) {
    trace_cap = trace_cap ? 2 * trace_cap : 1 << 16;
    trace_buf = realloc(trace_buf, trace_cap * sizeof *trace_buf);
    if (!trace_buf) abort();
  }
  trace_buf[trace_len++] = (uint32_t)(uintptr_t)udata;
}

static void on_tb(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
  (void)id;
  const size_t n = qemu_plugin_tb_n_insns(tb);
  qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &executed, n);
  for (size_t i = 0; i < n; ++i) {
    struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
    uint32_t enc = 0;
    if (qemu_plugin_insn_size(insn) == 4) memcpy(&enc, qemu_plugin_insn_data(insn), 4);
    if ((enc & ~(0x7Fu << 5)) == kHint) {
      const uint32_t imm = (enc >> 5) & 0x7F;
      if (imm >= COUNT_BEGIN && imm <= TRACE_END)
        qemu_plugin_register_vcpu_insn_exec_cb(insn, on_marker, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)imm);
      continue;
    }
    if (trace_enabled)
      qemu_plugin_register_vcpu_insn_exec_cb(insn, on_insn, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)enc);
  }
}

static void at_exit(qemu_plugin_id_t id, void *udata) {
  (void)id; (void)udata;
  if (trace_enabled) {
    fprintf(out, "trace %zu\n", trace_len);
    for (size_t i = 0; i < trace_len; ++i) fprintf(out, "%08x\n", trace_buf[i]);
  }
  fflush(out);
  if (out != stderr) fclose(out);
}

__attribute__((visibility("default"))) int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                                                int argc, char **argv) {
  (void)info;
  out = stderr;
  for (int i = 0; i < argc; ++i) {
    if (strncmp(argv[i], "out=", 4) == 0) {
      out = fopen(argv[i] + 4, "w");
      if (!out) { perror(argv[i] + 4); return -1; }
    } else if (strcmp(argv[i], "trace=1") == 0) {
      trace_enabled = true;
    } else {
      fprintf(stderr, "arm_estimate plugin: unknown argument %s\n", argv[i]);
      return -1;
    }
  }
  qemu_plugin_register_vcpu_tb_trans_cb(id, on_tb);
  qemu_plugin_register_atexit_cb(id, at_exit, NULL);
  return 0;
}
