/*
 * The I/O-stall program: slab allocations that fail, sleeps in mempool_alloc (or every D-state sleep),
 * and slow writeback calls with their nesting. slabfail, mempoolwait and writeslow each switch on one
 * section; iojitter switches on all three and correlates them in user space.
 *
 * One source file for the four tools because bcc rewrites map operations (events.perf_submit,
 * map.lookup...) only in the main source file: a section #included from another .bpf.c does not compile.
 *
 * Sections (flags):
 *   WANT_SLAB            kmem:kmem_cache_alloc (and kmem:kmalloc with HAVE_TP_KMALLOC) returning NULL.
 *     WANT_SLAB_KPROBE   + kprobes on the allocators (slab_alloc_entry) remember each thread's cache
 *                        pointer, so the cache name can be read where the tracepoint lacks `name`.
 *     WANT_SLUB_OOM      + a kprobe on slab_out_of_memory (slub_oom_entry); SLUB_OOM_ARGS when the
 *                        attach point is the real function (not a clone with other arguments).
 *     SLAB_REPORTS_ONLY  only slub_oom_entry: no tracepoint (a BPF run on every slab allocation of
 *                        the node); watch's always-on mode where slab_out_of_memory can be probed.
 *   WANT_SLEEP_KPROBE    kprobes: mempool_alloc entry/return, io_schedule_timeout and finish_wait entry.
 *   WANT_SLEEP_SCHED     sched:sched_switch: sleeps in D state (prev_state & DSTATE_MASK) with the stack;
 *   ONLY_IN_WB           only threads inside a traced writeback call (iojitter): their D-state sleeps,
 *                        mempool_alloc calls and allocator entries; any other thread costs a probe one
 *                        map lookup. No per-call mempool records (mp_alloc_return is not compiled);
 *                        the mempool_alloc call in progress is kept in the thread's wb_stack (mp).
 *   WANT_WB_TP           writeback:writeback_single_inode_start/_ (HAVE_TP_WBSI) and
 *                        ext4:ext4_writepages/_result (HAVE_TP_EXT4) pairs, nested per thread.
 *   WANT_WB_KPROBE       kprobes wb_entry_N / wb_return_N on up to WB_SLOTS writeback functions.
 *   WB_STACK_AT_EXIT     a writeback call's stack is taken when it ends, and only when it was slow (the
 *                        callers are the same as at entry; a stack walk on every call is most of
 *                        writeslow's cost). Not where a kretprobe hides the callers (before 5.15).
 *   WB_NO_STACK          no stack of the writeback calls (watch before 5.15, where it could only be taken
 *                        at every call's entry).
 *   WB_KEEP_STACKS       a thread's writeback stack stays in wb_stacks when its outermost call ends (watch:
 *                        no map insert and delete per call); user space deletes those of dead threads.
 * Tracepoint fields that not every kernel has: HAVE_TP_NAME, HAVE_TP_NODE, HAVE_TP_ACCOUNTED,
 * HAVE_TP_KMALLOC_NODE, HAVE_TP_KMALLOC_ACCOUNTED, HAVE_WB_CGROUP_INO.
 * Parameters (-D integers, validated in Python): FILTER_TGID, SLEEP_MIN_NS, WB_MIN_NS, DSTATE_MASK,
 * WB_ARG0..WB_ARG7 (WB_ARG_* kind of each kprobe slot's first argument), and the struct offsets the
 * kprobe modes read (OFF_*), taken from the running kernel's BTF. Without BTF, HAVE_MATCHING_HEADERS
 * (this kernel's own headers are installed: never set on a kernel whose headers differ) takes them
 * from the headers; HAVE_SLUB_DEF when linux/slub_def.h compiles on its own (up to 5.16).
 * Without either, nothing is read from kernel structs.
 */
#include <uapi/linux/ptrace.h>
#ifdef HAVE_MATCHING_HEADERS
#include <linux/fs.h>
#include <linux/mm_types.h>
#include <linux/writeback.h>
#include <linux/mempool.h>
#ifndef OFF_PAGE_MAPPING
#define OFF_PAGE_MAPPING offsetof(struct page, mapping)
#endif
#ifndef OFF_MAPPING_HOST
#define OFF_MAPPING_HOST offsetof(struct address_space, host)
#endif
#ifndef OFF_INODE_INO
#define OFF_INODE_INO offsetof(struct inode, i_ino)
#endif
#ifndef OFF_INODE_SB
#define OFF_INODE_SB offsetof(struct inode, i_sb)
#endif
#ifndef OFF_SB_DEV
#define OFF_SB_DEV offsetof(struct super_block, s_dev)
#endif
#ifndef OFF_WBC_NR_TO_WRITE
#define OFF_WBC_NR_TO_WRITE offsetof(struct writeback_control, nr_to_write)
#endif
#ifndef OFF_MEMPOOL_WAIT
#define OFF_MEMPOOL_WAIT offsetof(mempool_t, wait)
#endif
#ifndef OFF_MEMPOOL_POOL_DATA
#define OFF_MEMPOOL_POOL_DATA offsetof(mempool_t, pool_data)
#endif
#ifndef OFF_MEMPOOL_ALLOC
#define OFF_MEMPOOL_ALLOC offsetof(mempool_t, alloc)
#endif
#if defined(HAVE_SLUB_DEF) && !defined(OFF_CACHE_NAME)
#include <linux/slub_def.h>
#define OFF_CACHE_NAME offsetof(struct kmem_cache, name)
#endif
#endif /* HAVE_MATCHING_HEADERS */
#if defined(ONLY_IN_WB) && !(defined(WANT_WB_TP) || defined(WANT_WB_KPROBE))
#error "ONLY_IN_WB needs a writeback section"
#endif
#include "helpers_by_number.h"
#include "iostall.h"
#include "slabfail.h"
#include "mempoolwait.h"
#include "writeslow.h"

#ifndef SLEEP_MIN_NS
#define SLEEP_MIN_NS 1000000
#endif
#ifndef WB_MIN_NS
#define WB_MIN_NS 10000000
#endif
#ifndef DSTATE_MASK
#define DSTATE_MASK 2
#endif

BPF_PERF_OUTPUT(events);
BPF_STACK_TRACE(stacks, 16384);
BPF_PERCPU_ARRAY(scratch, struct iostall_event, 2);   /* slot 0: the event being built; slot 1: drop reports */
BPF_ARRAY(drops, u64, 1);
BPF_ARRAY(unsent, u64, 1);   /* events perf_submit() could not write (ring full): counted exactly here */
#if defined(WANT_SLEEP_KPROBE) && !defined(ONLY_IN_WB)
BPF_HASH(mp_calls, u32, struct mp_call, 10240);   /* threads inside mempool_alloc (ONLY_IN_WB: in wb_stack) */
#endif

static __always_inline int filtered(u32 tgid)
{
#ifdef FILTER_TGID
    if (tgid != FILTER_TGID)
        return 1;
#endif
    return 0;
}

/* A zeroed event of TYPE about the current thread, in per-cpu scratch slot SLOT. */
static __always_inline struct iostall_event *new_event(int slot, u32 type)
{
    struct iostall_event *ev = scratch.lookup(&slot);
    if (!ev)
        return 0;
    __builtin_memset(ev, 0, sizeof(*ev));
    u64 id = bpf_get_current_pid_tgid();
    ev->type = type;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->tgid = id >> 32;
    ev->tid = (u32)id;
    ev->kstack = -1;
    ev->node = -1;
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    return ev;
}

/* Send EV; a full ring is counted in `unsent` (the kernel would report it only with the ring's next record). */
static __always_inline void submit(void *ctx, struct iostall_event *ev)
{
    if (events.perf_submit(ctx, ev, sizeof(*ev)) < 0) {
        int zero = 0;
        u64 *n = unsent.lookup(&zero);
        if (n)
            __sync_fetch_and_add(n, 1);
    }
}

/* A map was full: count it, and report the 1st, 2nd, 4th, 8th... drop in the stream itself. */
static __always_inline void count_drop(void *ctx)
{
    int zero = 0;
    u64 *n = drops.lookup(&zero);
    if (!n)
        return;
    __sync_fetch_and_add(n, 1);   /* no use of the return value: kernels before 5.12 lack BPF_FETCH */
    u64 v = *n;
    if (v & (v - 1))
        return;
    struct iostall_event *ev = new_event(1, EV_DROPPED);
    if (!ev)
        return;
    ev->dropped = v;
    submit(ctx, ev);
}

/* ---------------------------------------------------------------- writeback (writeslow) --------- */
#if defined(WANT_WB_TP) || defined(WANT_WB_KPROBE)
BPF_HASH(wb_stacks, u32, struct wb_stack, 4096);   /* only threads inside a writeback call */
BPF_PERCPU_ARRAY(wb_zero, struct wb_stack, 1);      /* never written: the all-zero initial value */

/* Enter a writeback call: push a frame on this thread's stack (NULL when not recorded). */
static __always_inline struct wb_frame *wb_push(void *ctx, u32 func)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    if (filtered(id >> 32))
        return 0;
    struct wb_stack *st = wb_stacks.lookup(&tid);
    if (!st) {
        int zero = 0;
        struct wb_stack *z = wb_zero.lookup(&zero);
        if (!z)
            return 0;
        if (wb_stacks.update(&tid, z)) {
            count_drop(ctx);
            return 0;
        }
        st = wb_stacks.lookup(&tid);
        if (!st)
            return 0;
    }
    u32 d = st->depth;
    st->depth = d + 1;
    if (d >= WB_MAX_DEPTH) {
        st->f[WB_MAX_DEPTH - 1].flags |= WB_F_DEEPER;
        return 0;
    }
    struct wb_frame *f = &st->f[d & (WB_MAX_DEPTH - 1)];
    __builtin_memset(f, 0, sizeof(*f));
    f->start_ns = bpf_ktime_get_ns();
    f->func = func;
#if defined(WB_STACK_AT_EXIT) || defined(WB_NO_STACK)
    f->kstack = -1;
#else
    /* at entry, outermost calls only: a nested call's stack ends at the outer call's kretprobe trampoline */
    f->kstack = d == 0 ? stacks.get_stackid(ctx, 0) : -1;
#endif
    return f;
}

/* Leave a writeback call: pop its frame; an event when it took WB_MIN_NS or more (NULL otherwise).
 * A frame of another function on top means a return was missed: the thread's stack is dropped. */
static __always_inline struct iostall_event *wb_pop(void *ctx, u32 func, u64 *wbc, u64 *mapping)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct wb_stack *st = wb_stacks.lookup(&tid);
    if (!st || st->depth == 0)
        return 0;   /* the call started before we attached */
    u32 d = st->depth - 1;
    st->depth = d;
    if (d >= WB_MAX_DEPTH)
        return 0;
    struct wb_frame *f = &st->f[d & (WB_MAX_DEPTH - 1)];
    if (f->func != func) {
        wb_stacks.delete(&tid);
        return 0;
    }
    struct iostall_event *ev = 0;
    u64 now = bpf_ktime_get_ns();
    if (now - f->start_ns >= WB_MIN_NS) {
        ev = new_event(0, EV_WRITEBACK);
        if (ev) {
            ev->start_ns = f->start_ns;
            ev->ts_ns = now;
            ev->ptr = f->arg;
            ev->ino = f->ino;
            ev->dev = f->dev;
            ev->cgroup_ino = f->cgroup_ino;
            ev->nr_to_write = f->nr_to_write;
#ifdef WB_STACK_AT_EXIT
            ev->kstack = stacks.get_stackid(ctx, 0);   /* the same callers as at entry; slow calls only */
            ev->flags = f->flags | WB_F_EXIT_STACK;
#else
            ev->kstack = f->kstack;
            ev->flags = f->flags;
#endif
            ev->func = func;
            ev->depth = d;
            __builtin_memcpy(ev->name, f->name, sizeof(f->name));
            *wbc = f->wbc;
            *mapping = f->mapping;
        }
    }
    if (d == 0) {
        /* the outermost call ended, and with it any mempool_alloc call inside (ONLY_IN_WB: st->mp) */
#ifdef WB_KEEP_STACKS
        st->marks = 0;            /* the entry stays for the thread's next call; user space sweeps the dead */
#else
        wb_stacks.delete(&tid);
#endif
#if defined(WANT_SLEEP_KPROBE) && !defined(ONLY_IN_WB)
        /* without a return probe on mempool_alloc (before 5.15) its record would outlive the call and
         * every later io_schedule_timeout of the thread would take a stack */
        mp_calls.delete(&tid);
#endif
    }
    return ev;
}

#ifdef WANT_WB_TP
#ifdef HAVE_TP_WBSI
TRACEPOINT_PROBE(writeback, writeback_single_inode_start)
{
    struct wb_frame *f = wb_push(args, WB_SRC_SINGLE_INODE);
    if (!f)
        return 0;
    f->ino = args->ino;
    f->nr_to_write = args->nr_to_write;
    f->flags |= WB_F_INODE;
    bpf_probe_read(&f->name, sizeof(f->name), args->name);
#ifdef HAVE_WB_CGROUP_INO
    f->cgroup_ino = args->cgroup_ino;
#endif
    return 0;
}

TRACEPOINT_PROBE(writeback, writeback_single_inode)
{
    u64 wbc = 0, mapping = 0;
    struct iostall_event *ev = wb_pop(args, WB_SRC_SINGLE_INODE, &wbc, &mapping);
    if (!ev)
        return 0;
    ev->written = args->wrote;
    ev->flags |= WB_F_WRITTEN;
    submit(args, ev);
    return 0;
}
#endif /* HAVE_TP_WBSI */

#ifdef HAVE_TP_EXT4
TRACEPOINT_PROBE(ext4, ext4_writepages)
{
    struct wb_frame *f = wb_push(args, WB_SRC_EXT4);
    if (!f)
        return 0;
    f->ino = args->ino;
    f->dev = args->dev;
    f->nr_to_write = args->nr_to_write;
    f->flags |= WB_F_INODE;
    return 0;
}

TRACEPOINT_PROBE(ext4, ext4_writepages_result)
{
    u64 wbc = 0, mapping = 0;
    struct iostall_event *ev = wb_pop(args, WB_SRC_EXT4, &wbc, &mapping);
    if (!ev)
        return 0;
    ev->written = args->pages_written;
    ev->ret = args->ret;
    ev->flags |= WB_F_WRITTEN;
    submit(args, ev);
    return 0;
}
#endif /* HAVE_TP_EXT4 */
#endif /* WANT_WB_TP */

#ifdef WANT_WB_KPROBE
#if defined(OFF_PAGE_MAPPING) && defined(OFF_MAPPING_HOST) && defined(OFF_INODE_INO) && defined(OFF_INODE_SB) \
    && defined(OFF_SB_DEV) && defined(OFF_WBC_NR_TO_WRITE)
#define WB_READ_ARGS
#endif

/* UNTESTED on this machine (no kprobes): exercised by tests/kernel/test_incident1_kprobes.py.
 * At entry only what changes during the call is read (the pages asked for); the inode is read at the
 * end of a slow call (the mapping and its inode live through the call). */
static __always_inline int wb_entry(struct pt_regs *ctx, u32 slot, int argkind)
{
    struct wb_frame *f = wb_push(ctx, slot);
    if (!f)
        return 0;
    f->arg = PT_REGS_PARM1(ctx);
#ifdef WB_READ_ARGS
    if (argkind == WB_ARG_MAPPING)
        f->mapping = f->arg;
    else if (argkind == WB_ARG_PAGE)   /* a page's mapping can be cleared once the call unlocks it */
        bpf_probe_read(&f->mapping, sizeof(f->mapping), (void *)(f->arg + OFF_PAGE_MAPPING));
    if (argkind != WB_ARG_NONE) {
        f->wbc = PT_REGS_PARM2(ctx);
        bpf_probe_read(&f->nr_to_write, sizeof(f->nr_to_write), (void *)(f->wbc + OFF_WBC_NR_TO_WRITE));
    }
#endif
    return 0;
}

/* The inode (number, device) behind MAPPING into EV. */
static __always_inline void read_inode(struct iostall_event *ev, u64 mapping)
{
#ifdef WB_READ_ARGS
    u64 host = 0, sb = 0;
    if (mapping)
        bpf_probe_read(&host, sizeof(host), (void *)(mapping + OFF_MAPPING_HOST));
    if (host) {
        u64 ino = 0;      /* unsigned long */
        u32 dev = 0;      /* dev_t */
        bpf_probe_read(&ino, sizeof(ino), (void *)(host + OFF_INODE_INO));
        bpf_probe_read(&sb, sizeof(sb), (void *)(host + OFF_INODE_SB));
        if (sb)
            bpf_probe_read(&dev, sizeof(dev), (void *)(sb + OFF_SB_DEV));
        ev->ino = ino;
        ev->dev = dev;
        ev->flags |= WB_F_INODE;
    }
#endif
}

static __always_inline int wb_return(struct pt_regs *ctx, u32 slot)
{
    u64 wbc = 0, mapping = 0;
    struct iostall_event *ev = wb_pop(ctx, slot, &wbc, &mapping);
    if (!ev)
        return 0;
    read_inode(ev, mapping);
#ifdef OFF_WBC_NR_TO_WRITE
    if (wbc) {
        long left = 0;
        bpf_probe_read(&left, sizeof(left), (void *)(wbc + OFF_WBC_NR_TO_WRITE));
        ev->written = ev->nr_to_write - left;
        ev->flags |= WB_F_WRITTEN;
    }
#endif
    submit(ctx, ev);
    return 0;
}

#ifndef WB_ARG0
#define WB_ARG0 0
#endif
#ifndef WB_ARG1
#define WB_ARG1 0
#endif
#ifndef WB_ARG2
#define WB_ARG2 0
#endif
#ifndef WB_ARG3
#define WB_ARG3 0
#endif
#ifndef WB_ARG4
#define WB_ARG4 0
#endif
#ifndef WB_ARG5
#define WB_ARG5 0
#endif
#ifndef WB_ARG6
#define WB_ARG6 0
#endif
#ifndef WB_ARG7
#define WB_ARG7 0
#endif
/* One entry/return pair per slot: Python attaches slot N to the Nth resolved function. Written out, not
 * made by a macro: bcc 0.18 (Debian 11) loses the second function of a macro expansion. */
int wb_entry_0(struct pt_regs *ctx) { return wb_entry(ctx, 0, WB_ARG0); }
int wb_return_0(struct pt_regs *ctx) { return wb_return(ctx, 0); }
int wb_entry_1(struct pt_regs *ctx) { return wb_entry(ctx, 1, WB_ARG1); }
int wb_return_1(struct pt_regs *ctx) { return wb_return(ctx, 1); }
int wb_entry_2(struct pt_regs *ctx) { return wb_entry(ctx, 2, WB_ARG2); }
int wb_return_2(struct pt_regs *ctx) { return wb_return(ctx, 2); }
int wb_entry_3(struct pt_regs *ctx) { return wb_entry(ctx, 3, WB_ARG3); }
int wb_return_3(struct pt_regs *ctx) { return wb_return(ctx, 3); }
int wb_entry_4(struct pt_regs *ctx) { return wb_entry(ctx, 4, WB_ARG4); }
int wb_return_4(struct pt_regs *ctx) { return wb_return(ctx, 4); }
int wb_entry_5(struct pt_regs *ctx) { return wb_entry(ctx, 5, WB_ARG5); }
int wb_return_5(struct pt_regs *ctx) { return wb_return(ctx, 5); }
int wb_entry_6(struct pt_regs *ctx) { return wb_entry(ctx, 6, WB_ARG6); }
int wb_return_6(struct pt_regs *ctx) { return wb_return(ctx, 6); }
int wb_entry_7(struct pt_regs *ctx) { return wb_entry(ctx, 7, WB_ARG7); }
int wb_return_7(struct pt_regs *ctx) { return wb_return(ctx, 7); }
#endif /* WANT_WB_KPROBE */
#endif /* writeback */

#ifdef ONLY_IN_WB
/* Thread TID's writeback stack while it is inside a traced writeback call, else NULL. */
static __always_inline struct wb_stack *wb_stack_of(u32 tid)
{
    struct wb_stack *st = wb_stacks.lookup(&tid);
    return st && st->depth > 0 ? st : 0;
}
#endif

/* Does thread TID matter? With ONLY_IN_WB, only while it is inside a traced writeback call. */
static __always_inline int thread_wanted(u32 tid)
{
#ifdef ONLY_IN_WB
    return wb_stack_of(tid) != 0;
#else
    return 1;
#endif
}

/* ---------------------------------------------------------------- sleeps (mempoolwait) ---------- */
/* The name of kmem_cache CACHE into ev->name (a slab failure's cache, or the cache behind a mempool). */
static __always_inline void read_cache_name(struct iostall_event *ev, u64 cache)
{
#ifdef OFF_CACHE_NAME
    u64 name = 0;
    if (!cache)
        return;
    bpf_probe_read(&name, sizeof(name), (void *)(cache + OFF_CACHE_NAME));
    if (name && bpf_probe_read_str(ev->name, sizeof(ev->name), (void *)name) > 0)
        ev->flags |= SLAB_F_NAME_FROM_CACHE;
#endif
}

#ifdef WANT_SLEEP_SCHED
BPF_HASH(dsleeps, u32, struct dsleep, 10240);

TRACEPOINT_PROBE(sched, sched_switch)
{
    u64 now = bpf_ktime_get_ns();
    u32 prev = args->prev_pid;
    if ((args->prev_state & DSTATE_MASK) && prev != 0) {
        u64 id = bpf_get_current_pid_tgid();   /* the tracepoint runs in prev's context */
        if (!filtered(id >> 32) && thread_wanted(prev)) {
            struct dsleep s = {};
            s.start_ns = now;
            s.state = args->prev_state;
            s.tgid = id >> 32;
            s.kstack = stacks.get_stackid(args, 0);
            bpf_get_current_comm(&s.comm, sizeof(s.comm));
            if (dsleeps.update(&prev, &s))
                count_drop(args);
        }
    }
    u32 next = args->next_pid;
    struct dsleep *found = dsleeps.lookup(&next);
    if (!found)
        return 0;
    struct dsleep s = {};
    __builtin_memcpy(&s, found, sizeof(s));
    dsleeps.delete(&next);
    if (now - s.start_ns < SLEEP_MIN_NS)
        return 0;
    struct iostall_event *ev = new_event(0, EV_SLEEP);
    if (!ev)
        return 0;
    ev->tgid = s.tgid;
    ev->tid = next;
    ev->start_ns = s.start_ns;
    ev->ts_ns = now;
    ev->state = s.state;
    ev->kstack = s.kstack;
    ev->flags = SLEEP_F_SCHED;
    __builtin_memcpy(ev->comm, s.comm, sizeof(ev->comm));
    submit(args, ev);
    return 0;
}
#endif /* WANT_SLEEP_SCHED */

#ifdef WANT_SLEEP_KPROBE
/* UNTESTED on this machine (no kprobes): exercised by tests/kernel/test_incident1_kprobes.py.
 * The sequence measured (mm/mempool.c, the same in 3.10 and 6.x): mempool_alloc entry marks the
 * thread; io_schedule_timeout(5*HZ) entry while marked starts a sleep; finish_wait(&pool->wait)
 * ends it; mempool_alloc return reports the whole call. */
#ifdef ONLY_IN_WB
/* Thread TID's mempool_alloc call, kept in its writeback stack while it is inside a traced writeback
 * (no map of its own: no insert or delete per call; it ends with the outermost writeback call). */
static __always_inline struct mp_call *mp_call_of(u32 tid)
{
    struct wb_stack *st = wb_stack_of(tid);
    return st && (st->marks & WB_S_MP_CALL) ? &st->mp : 0;
}
#else
static __always_inline struct mp_call *mp_call_of(u32 tid)
{
    return mp_calls.lookup(&tid);
}
#endif

int mp_alloc_entry(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    if (filtered(id >> 32))
        return 0;
#ifdef ONLY_IN_WB
    struct wb_stack *st = wb_stack_of(tid);
    if (!st)
        return 0;
    struct mp_call *c = &st->mp;
    __builtin_memset(c, 0, sizeof(*c));
    c->pool = PT_REGS_PARM1(ctx);
    c->gfp = PT_REGS_PARM2(ctx);
    c->kstack = -1;
    st->marks |= WB_S_MP_CALL;
#else
    struct mp_call c = {};
    c.pool = PT_REGS_PARM1(ctx);
    c.gfp = PT_REGS_PARM2(ctx);
    c.entry_ns = bpf_ktime_get_ns();   /* for mp_alloc_return, which ONLY_IN_WB plans never attach */
    c.kstack = -1;
    if (mp_calls.update(&tid, &c))
        count_drop(ctx);
#endif
    return 0;
}

/* The stack of a sleep is taken here, inside mempool_alloc. Where the unwinder cannot see through
 * kretprobe trampolines (before 5.15), Python does not put a kretprobe on mempool_alloc (no
 * mp_alloc_return): the trampoline would hide every caller above mempool_alloc. */
int mp_sleep_entry(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mp_call *c = mp_call_of(tid);
    if (!c)
        return 0;
    c->sleep_ns = bpf_ktime_get_ns();
#ifdef HAVE_JIFFIES64
    c->sleep_jiffies = bpftools_jiffies64();
#endif
    c->timeout = PT_REGS_PARM1(ctx);
    c->kstack = stacks.get_stackid(ctx, 0);
    return 0;
}

/* finish_wait(q, wait): a mempool sleep ends when q is the pool's wait queue. Without BTF or headers
 * the offset of mempool_t.wait is unknown: any q within the first 256 bytes of the pool is accepted
 * (mempool_t is a lock, two ints, four pointers and the wait queue head). */
int mp_finish_wait_entry(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mp_call *c = mp_call_of(tid);
    if (!c || c->sleep_ns == 0)
        return 0;
    u64 q = PT_REGS_PARM1(ctx);
#ifdef OFF_MEMPOOL_WAIT
    if (q != c->pool + OFF_MEMPOOL_WAIT)
        return 0;
#else
    if (q < c->pool || q >= c->pool + 256)
        return 0;
#endif
    u64 now = bpf_ktime_get_ns();
    u64 slept = now - c->sleep_ns;
    c->sleeps += 1;
    c->waited_ns += slept;
    if (slept >= SLEEP_MIN_NS) {
        struct iostall_event *ev = new_event(0, EV_SLEEP);
        if (ev) {
            ev->start_ns = c->sleep_ns;
            ev->ts_ns = now;
            ev->ptr = c->pool;
            ev->gfp = c->gfp;
            ev->timeout = c->timeout;
            ev->kstack = c->kstack;
            ev->flags = SLEEP_F_MEMPOOL;
#ifdef HAVE_JIFFIES64
            /* timed out <=> it lasted its timeout in jiffies (a timer never fires early); ns under
             * emulation or a skewed clock can say 4.9 s for a 5 s timeout */
            ev->jiffies = bpftools_jiffies64() - c->sleep_jiffies;
            ev->flags |= SLEEP_F_JIFFIES;
#endif
#ifdef OFF_MEMPOOL_ALLOC
            /* what the pool is, read only now that a sleep is reported (the pool lives while mempool_alloc runs):
             * its element allocator, which Python names, and pool_data, the kmem_cache of a
             * mempool_alloc_slab pool (the cache name counts only for those) */
            bpf_probe_read(&ev->call_site, sizeof(ev->call_site), (void *)(c->pool + OFF_MEMPOOL_ALLOC));
            bpf_probe_read(&ev->cache, sizeof(ev->cache), (void *)(c->pool + OFF_MEMPOOL_POOL_DATA));
            read_cache_name(ev, ev->cache);
#endif
            submit(ctx, ev);
        }
    }
    c->sleep_ns = 0;
    return 0;
}

#ifndef ONLY_IN_WB
int mp_alloc_return(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct mp_call *c = mp_calls.lookup(&tid);
    if (!c)
        return 0;
    u64 now = bpf_ktime_get_ns();
    if (c->sleeps > 0 || now - c->entry_ns >= SLEEP_MIN_NS) {
        struct iostall_event *ev = new_event(0, EV_MEMPOOL_ALLOC);
        if (ev) {
            ev->start_ns = c->entry_ns;
            ev->ts_ns = now;
            ev->ptr = c->pool;
            ev->gfp = c->gfp;
            ev->written = c->sleeps;
            ev->waited_ns = c->waited_ns;
            ev->kstack = c->kstack >= 0 ? c->kstack : stacks.get_stackid(ctx, 0);
            ev->flags = PT_REGS_RC(ctx) == 0 ? MPALLOC_F_NULL : 0;
            submit(ctx, ev);
        }
    }
    mp_calls.delete(&tid);
    return 0;
}
#endif /* !ONLY_IN_WB */
#endif /* WANT_SLEEP_KPROBE */

/* ---------------------------------------------------------------- slab failures (slabfail) ------ */
#ifdef WANT_SLAB
#ifndef SLAB_REPORTS_ONLY
#ifdef WANT_SLAB_KPROBE
/* UNTESTED on this machine (no kprobes): exercised by tests/kernel/test_incident1_kprobes.py. */
BPF_HASH(slab_calls, u32, struct slab_calls, 10240);   /* only threads inside an allocator */
BPF_PERCPU_ARRAY(slab_zero, struct slab_calls, 1);       /* never written: the all-zero initial value */

/* kmem_cache_alloc(s, gfp) and the kmalloc-from-a-cache variant: push s and the return address. */
int slab_alloc_entry(struct pt_regs *ctx)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    if (!thread_wanted(tid))
        return 0;
    struct slab_calls *st = slab_calls.lookup(&tid);
    if (!st) {
        int zero = 0;
        struct slab_calls *z = slab_zero.lookup(&zero);
        if (!z)
            return 0;
        if (slab_calls.update(&tid, z)) {
            count_drop(ctx);
            return 0;
        }
        st = slab_calls.lookup(&tid);
        if (!st)
            return 0;
    }
    u32 d = st->depth;
    if (d >= SLAB_STACK)
        d = SLAB_STACK - 1;       /* deeper than we keep: the innermost slot is reused */
    struct slab_call *c = &st->c[d & (SLAB_STACK - 1)];
    c->cache = PT_REGS_PARM1(ctx);
    bpf_probe_read(&c->ret_ip, sizeof(c->ret_ip), (void *)PT_REGS_SP(ctx));
    st->depth = d + 1;
    return 0;
}

/* The cache of the innermost call of this thread whose return address is CALL_SITE (0 if none);
 * that call and any stale ones inside it are popped. */
static __always_inline u64 slab_cache_of(u64 call_site)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct slab_calls *st = slab_calls.lookup(&tid);
    if (!st)
        return 0;
    u64 cache = 0;
#pragma unroll
    for (int i = SLAB_STACK - 1; i >= 0; i--) {
        if ((u32)i < st->depth && st->c[i].ret_ip == call_site) {
            cache = st->c[i].cache;
            st->depth = i;
            break;
        }
    }
    if (st->depth == 0)
        slab_calls.delete(&tid);
    return cache;
}
#endif


static __always_inline struct iostall_event *slab_failure(u32 src, u64 call_site, u64 bytes, u64 gfp, u64 cache)
{
    if (filtered(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct iostall_event *ev = new_event(0, EV_SLAB_FAIL);
    if (!ev)
        return 0;
    ev->func = src;
    ev->call_site = call_site;
    ev->bytes = bytes;
    ev->gfp = gfp;
    ev->cache = cache;
    read_cache_name(ev, cache);
    return ev;
}

#define ACCOUNTED_UNKNOWN -1

/* A slab tracepoint hit: report it when the allocation failed (PTR 0). Returns the event (not
 * submitted yet) so the caller can add what only its tracepoint has; the kmem_cache_alloc and kmalloc
 * tracepoints differ in fields, not in meaning. */
static __always_inline struct iostall_event *slab_tracepoint(void *ctx, u32 src, u64 call_site, u64 ptr,
                                                             u64 bytes, u64 gfp, s32 node, int accounted)
{
    u64 cache = 0;
#ifdef WANT_SLAB_KPROBE
    cache = slab_cache_of(call_site);
#endif
    if (ptr)
        return 0;
    struct iostall_event *ev = slab_failure(src, call_site, bytes, gfp, cache);
    if (!ev)
        return 0;
    ev->node = node;
    if (accounted != ACCOUNTED_UNKNOWN)
        ev->flags |= SLAB_F_ACCOUNTED_KNOWN | (accounted ? SLAB_F_ACCOUNTED : 0);
    ev->kstack = stacks.get_stackid(ctx, 0);
    return ev;
}

TRACEPOINT_PROBE(kmem, kmem_cache_alloc)
{
    s32 node = -1;
    int accounted = ACCOUNTED_UNKNOWN;
#ifdef HAVE_TP_NODE
    node = args->node;
#endif
#ifdef HAVE_TP_ACCOUNTED
    accounted = args->accounted;
#endif
    struct iostall_event *ev = slab_tracepoint(args, SLAB_SRC_CACHE, args->call_site, (u64)args->ptr,
                                               args->bytes_req, args->gfp_flags, node, accounted);
    if (!ev)
        return 0;
#ifdef HAVE_TP_NAME
    if (!(ev->flags & SLAB_F_NAME_FROM_CACHE)) {
        TP_DATA_LOC_READ_STR(ev->name, name, NAME_LEN);
        ev->flags |= SLAB_F_NAME_FROM_TP;
    }
#endif
    submit(args, ev);
    return 0;
}

#ifdef HAVE_TP_KMALLOC
TRACEPOINT_PROBE(kmem, kmalloc)
{
    s32 node = -1;
    int accounted = ACCOUNTED_UNKNOWN;
#ifdef HAVE_TP_KMALLOC_NODE
    node = args->node;
#endif
#ifdef HAVE_TP_KMALLOC_ACCOUNTED
    accounted = args->accounted;
#endif
    struct iostall_event *ev = slab_tracepoint(args, SLAB_SRC_KMALLOC, args->call_site, (u64)args->ptr,
                                               args->bytes_req, args->gfp_flags, node, accounted);
    if (ev)
        submit(args, ev);
    return 0;
}
#endif /* HAVE_TP_KMALLOC */
#endif /* !SLAB_REPORTS_ONLY */

#ifdef WANT_SLUB_OOM
/* slab_out_of_memory runs when SLUB cannot get a page for a new slab. On 3.10 a memcg kmem charge
 * failure gets there (the incident's "SLUB: Unable to allocate memory on node -1"), but only where the
 * caller may warn: __slab_alloc checks __GFP_NOWARN and printk_ratelimit() before the call (later
 * kernels check both inside it, so every failure of a new slab enters it). Since 5.9 a per-object charge
 * failure returns before it. Exercised in the lab by bpftools_slabfail's "slub_oom" command (a new
 * cache whose page allocation fails): tests/kernel/test_watch.py. */
int slub_oom_entry(struct pt_regs *ctx)
{
    if (filtered(bpf_get_current_pid_tgid() >> 32))
        return 0;
    struct iostall_event *ev = new_event(0, EV_SLUB_OOM);
    if (!ev)
        return 0;
#ifdef SLUB_OOM_ARGS
    ev->cache = PT_REGS_PARM1(ctx);
    ev->gfp = PT_REGS_PARM2(ctx);
    ev->node = (s32)PT_REGS_PARM3(ctx);
    ev->flags |= SLAB_F_OOM_ARGS;
    read_cache_name(ev, ev->cache);
#endif
    ev->kstack = stacks.get_stackid(ctx, 0);
    submit(ctx, ev);
    return 0;
}
#endif /* WANT_SLUB_OOM */
#endif /* WANT_SLAB */
