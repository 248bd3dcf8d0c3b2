/*
 * refleak: who takes and drops the references of chosen network devices (records in refleak.h).
 *
 * Devices: user space names them (RL_CTL_LOOKUP armed, then an SIOCGIFFLAGS ioctl of ours reaches
 * dev_get_flags(dev): lookup_entry), or, with WATCH_NEW, every device that registers
 * (register_entry/register_return). `watched` holds them; unregister_entry and free_entry report
 * their unregistration and free (the free ends the watch: the per-cpu counter is freed after it).
 *
 * Strategies (each section compiled only when Python switches it on):
 *   WATCH         on_watch: the BPF_PROG_TYPE_PERF_EVENT program of the hardware watchpoints that
 *                 bpftools/breakpoints.py opens on each CPU's counter slot. The trap comes after the
 *                 write, so the change is the slot's new value minus its shadow in `slots`; a sync
 *                 (sync_request: a getppid() of ours with RL_CTL_SYNC = dev) sets the shadows and
 *                 reports the level, the baseline of the watch. `watch_runs` counts its runs per
 *                 address and CPU: perf counts every hit, and the kernel skips the program for a hit
 *                 that lands while another BPF program runs on that CPU, so user space can tell how
 *                 many writes were not seen.
 *   HOLD_DST, HOLD_FNHE, HOLD_NEIGH, HOLD_IN_DEV, HOLD_INET6_DEV, HOLD_FIB_NH
 *                 holder objects: the kernel objects that pin a device, from creation (with its stack)
 *                 to release, in `holders`; HOLD_FNHE checks after rt_set_nexthop/rt_bind_exception
 *                 whether a tracked dst became the route exception's cached route.
 *   TRACKER       ref_tracker_alloc/ref_tracker_free (CONFIG_NET_DEV_REFCNT_TRACKER kernels).
 *   INLINE        site_entry: one kprobe function for every inlined dev_hold/dev_put site; `sites`
 *                 (filled from Python) says, per probe address, the delta and where the device is.
 * Parameters (-D integers, validated in Python): SELF_TGID; NCPUS (possible CPUs, <= MAX_CPUS);
 * PER_CPU_OFFSET (address of __per_cpu_offset, as a signed number); struct offsets OFF_* from BTF;
 * DEV_REFCNT_PCPU when the counter is dev->pcpu_refcnt; FNHE_ARG (2: rt_bind_exception(rt, fnhe, ..),
 * 4: rt_set_nexthop(rt, daddr, res, fnhe, ..)); HAVE_CGROUP_ID.
 */
#include <uapi/linux/ptrace.h>
#include <uapi/linux/bpf_perf_event.h>
#ifdef HAVE_MATCHING_HEADERS
/* No BTF: this kernel's own headers give the offsets (Python checked that they match the kernel). */
#include <linux/version.h>
#include <linux/netdevice.h>
#include <net/net_namespace.h>
#include <net/neighbour.h>
#include <linux/inetdevice.h>
#include <net/if_inet6.h>
#include <net/dst.h>
#ifndef OFF_DEV_REFCNT
/* Since v5.13 (commit 919067cc845f) the counter is per-cpu only with CONFIG_PCPU_DEV_REFCNT. */
#if defined(CONFIG_PCPU_DEV_REFCNT) || LINUX_VERSION_CODE < KERNEL_VERSION(5, 13, 0)
#define DEV_REFCNT_PCPU
#define OFF_DEV_REFCNT offsetof(struct net_device, pcpu_refcnt)
#else
#define OFF_DEV_REFCNT offsetof(struct net_device, dev_refcnt)
#endif
#endif
#ifndef OFF_DEV_NAME
#define OFF_DEV_NAME offsetof(struct net_device, name)
#endif
#ifndef OFF_DEV_IFINDEX
#define OFF_DEV_IFINDEX offsetof(struct net_device, ifindex)
#endif
#ifndef OFF_DEV_ND_NET
#define OFF_DEV_ND_NET offsetof(struct net_device, nd_net)
#endif
#ifndef OFF_NET_NS_INUM
/* struct ns_common came in v3.19 (commit 435d5f4bb2cc); before, the inode was net->proc_inum. */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(3, 19, 0)
#define OFF_NET_NS_INUM offsetof(struct net, ns.inum)
#else
#define OFF_NET_NS_INUM offsetof(struct net, proc_inum)
#endif
#endif
#ifndef OFF_NEIGH_DEV
#define OFF_NEIGH_DEV offsetof(struct neighbour, dev)
#endif
#ifndef OFF_DST_DEV
#define OFF_DST_DEV offsetof(struct dst_entry, dev)
#endif
#ifndef OFF_IN_DEV_DEV
#define OFF_IN_DEV_DEV offsetof(struct in_device, dev)
#endif
#ifndef OFF_INET6_DEV_DEV
#define OFF_INET6_DEV_DEV offsetof(struct inet6_dev, dev)
#endif
#if !defined(OFF_DEV_REFCNT_TRACKER) && defined(CONFIG_NET_DEV_REFCNT_TRACKER)
#define OFF_DEV_REFCNT_TRACKER offsetof(struct net_device, refcnt_tracker)
#endif
#endif /* HAVE_MATCHING_HEADERS */
#include "helpers_by_number.h"
#include "refleak.h"

#ifndef NCPUS
#define NCPUS 1
#endif
#ifndef PER_CPU_OFFSET
#define PER_CPU_OFFSET 0
#endif

struct watched {
    u64 ref;        /* pcpu_refcnt (a per-cpu pointer) or the address of dev_refcnt */
    u32 flags;      /* RL_F_PCPU */
    u32 pad;
};

struct slot {
    u64 dev;
    s32 value;      /* the shadow: the slot's value after the last write seen */
    u32 cpu;
};

struct run_count {   /* per CPU, per watched address: user space compares with the breakpoint's hit count */
    u64 runs;       /* times on_watch ran for a hit */
    u64 in_sync;    /* ... of which while user space was syncing a device (the sync may miss that write) */
};

struct holder {
    u64 dev;
    u32 kind;
    u32 pad;
};

struct pending {    /* a holder being created: entry kprobe -> return kprobe of the same thread */
    u64 dev;
    u64 obj;
    u64 ts_ns;
    s32 kstack;
    u32 kind;
};

struct fnhe_call {
    u64 rt;
    u64 fnhe;
};

BPF_PERF_OUTPUT(events);
BPF_STACK_TRACE(stacks, 16384);
BPF_PERCPU_ARRAY(scratch, struct refleak_event, 2);  /* 0: kprobes and tracepoints, 1: the watchpoint */
BPF_ARRAY(ctl, u64, RL_CTL_N);
BPF_ARRAY(cpu_offsets, u64, MAX_CPUS);
BPF_ARRAY(drops, u64, 1);
BPF_HASH(watched, u64, struct watched, 4096);
BPF_HASH(slots, u64, struct slot, 4096);
BPF_TABLE("percpu_hash", u64, struct run_count, watch_runs, 4096);   /* bcc 0.18 has no BPF_PERCPU_HASH */
BPF_HASH(registering, u32, struct pending, 1024);
BPF_HASH(holders, u64, struct holder, 65536);
BPF_HASH(creating, u64, struct pending, 4096);
BPF_HASH(binding, u32, struct fnhe_call, 1024);
#ifdef INLINE
BPF_HASH(sites, u64, struct refleak_site, 65536);
#endif

static __always_inline struct refleak_event *new_event(int slot, u32 type)
{
    struct refleak_event *ev = scratch.lookup(&slot);
    if (!ev)
        return 0;
    __builtin_memset(ev, 0, sizeof(*ev));
    u64 id = bpf_get_current_pid_tgid();
    ev->type = type;
    ev->ts_ns = bpf_ktime_get_ns();
    ev->tgid = id >> 32;
    ev->tid = (u32)id;
    ev->cpu = bpf_get_smp_processor_id();
    ev->kstack = -1;
#ifdef HAVE_CGROUP_ID
    ev->cgroup_id = bpftools_get_current_cgroup_id();
#endif
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    return ev;
}

/* A map was full: count it, and report the 1st, 2nd, 4th, 8th... drop in the stream. */
static __always_inline void count_drop(void *ctx)
{
    int zero = 0;
    u64 *n = drops.lookup(&zero);
    if (!n)
        return;
    __sync_fetch_and_add(n, 1);
    u64 v = *n;
    if (v & (v - 1))
        return;
    struct refleak_event *ev = new_event(0, RL_EV_DROPPED);
    if (!ev)
        return;
    ev->level = v;
    events.perf_submit(ctx, ev, sizeof(*ev));
}

static __always_inline u64 read_u64(u64 addr)
{
    u64 v = 0;
    bpf_probe_read(&v, sizeof(v), (void *)addr);
    return v;
}

static __always_inline u64 counter_ref(u64 dev)
{
#ifdef DEV_REFCNT_PCPU
    return read_u64(dev + OFF_DEV_REFCNT);
#else
    return dev + OFF_DEV_REFCNT;
#endif
}

/* The reference count now: the sum of the per-cpu slots (or the refcount_t). With STORE, each slot's
 * value becomes its shadow in `slots` (the watch's baseline); the per-cpu offsets go to `cpu_offsets`
 * for user space, which arms a watchpoint on each slot. */
static __always_inline s64 read_level(u64 dev, u64 ref, int store)
{
    s64 level = 0;
#if defined(LEVEL_UNKNOWN)
    return 0;       /* the per-cpu slots cannot be located: Python reports the level as unknown */
#elif defined(DEV_REFCNT_PCPU)
#pragma unroll
    for (int i = 0; i < MAX_CPUS; i++) {
        if (i >= NCPUS)
            break;
        u64 off = read_u64((u64)(PER_CPU_OFFSET) + i * 8);
        u64 addr = ref + off;
        s32 v = 0;
        bpf_probe_read(&v, sizeof(v), (void *)addr);
        level += v;
        int k = i;
        cpu_offsets.update(&k, &off);
        if (store) {
            struct slot s = {.dev = dev, .value = v, .cpu = i};
            slots.update(&addr, &s);
        }
    }
#else
    s32 v = 0;
    bpf_probe_read(&v, sizeof(v), (void *)ref);
    level = v;
    if (store) {
        struct slot s = {.dev = dev, .value = v, .cpu = 0};
        slots.update(&ref, &s);
    }
#endif
    return level;
}

/* TS: when the device was first seen (register_netdevice entry), 0 for now. */
static __always_inline void device_event(void *ctx, u64 dev, struct watched *w, u32 flags, u64 ts)
{
    struct refleak_event *ev = new_event(0, RL_EV_DEVICE);
    if (!ev)
        return;
    if (ts)
        ev->ts_ns = ts;
    ev->dev = dev;
    ev->aux = w->ref;
    ev->flags = w->flags | flags;
    bpf_probe_read_str(&ev->name, sizeof(ev->name), (void *)(dev + OFF_DEV_NAME));
    s32 ifindex = 0;
    bpf_probe_read(&ifindex, sizeof(ifindex), (void *)(dev + OFF_DEV_IFINDEX));
    ev->ifindex = ifindex;
    u64 net = read_u64(dev + OFF_DEV_ND_NET);
    u32 inum = 0;
    if (net)
        bpf_probe_read(&inum, sizeof(inum), (void *)(net + OFF_NET_NS_INUM));
    ev->netns = inum;
    ev->level = read_level(dev, w->ref, 0);
    events.perf_submit(ctx, ev, sizeof(*ev));
}

static __always_inline struct watched *watch(u64 dev)
{
    struct watched *w = watched.lookup(&dev);
    if (w)
        return w;
    struct watched nw = {.ref = counter_ref(dev)};
#ifdef DEV_REFCNT_PCPU
    nw.flags = RL_F_PCPU;
#endif
    watched.update(&dev, &nw);
    return watched.lookup(&dev);
}

/* kprobe dev_get_flags(dev): our own SIOCGIFFLAGS while user space looks devices up by name. */
int lookup_entry(struct pt_regs *ctx)
{
    if ((bpf_get_current_pid_tgid() >> 32) != SELF_TGID)
        return 0;
    int k = RL_CTL_LOOKUP;
    u64 *on = ctl.lookup(&k);
    if (!on || !*on)
        return 0;
    u64 dev = PT_REGS_PARM1(ctx);
    struct watched *w = watch(dev);
    if (!w) {
        count_drop(ctx);
        return 0;
    }
    device_event(ctx, dev, w, 0, 0);
    return 0;
}

#ifdef WATCH_NEW
/* kprobe register_netdevice(dev): watch it before its notifiers run (in_dev, inet6_dev...). */
int register_entry(struct pt_regs *ctx)
{
    u64 dev = PT_REGS_PARM1(ctx);
    u32 tid = bpf_get_current_pid_tgid();
    if (!watch(dev)) {
        count_drop(ctx);
        return 0;
    }
    struct pending p = {.dev = dev, .ts_ns = bpf_ktime_get_ns()};
    registering.update(&tid, &p);
    return 0;
}

/* kretprobe register_netdevice: now it has its name and ifindex; a failure unwatches it. */
int register_return(struct pt_regs *ctx)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct pending *p = registering.lookup(&tid);
    if (!p)
        return 0;
    u64 dev = p->dev, ts = p->ts_ns;
    registering.delete(&tid);
    struct watched *w = watched.lookup(&dev);
    if (!w)
        return 0;
    if (PT_REGS_RC(ctx) != 0) {
        watched.delete(&dev);
        return 0;
    }
    device_event(ctx, dev, w, RL_F_REGISTERED, ts);
    return 0;
}
#endif

static __always_inline void lifecycle_event(struct pt_regs *ctx, u64 dev, u32 type)
{
    struct watched *w = watched.lookup(&dev);
    if (!w)
        return;
    struct refleak_event *ev = new_event(0, type);
    if (!ev)
        return;
    ev->dev = dev;
    ev->flags = w->flags;
    ev->level = read_level(dev, w->ref, 0);
    ev->kstack = stacks.get_stackid(ctx, 0);
    events.perf_submit(ctx, ev, sizeof(*ev));
}

/* kprobe unregister_netdevice_queue(dev, head) */
int unregister_entry(struct pt_regs *ctx)
{
    lifecycle_event(ctx, PT_REGS_PARM1(ctx), RL_EV_UNREGISTER);
    return 0;
}

/* kprobe free_netdev(dev): the last moment the counter exists; the watch ends here. */
int free_entry(struct pt_regs *ctx)
{
    u64 dev = PT_REGS_PARM1(ctx);
    lifecycle_event(ctx, dev, RL_EV_FREE);
    watched.delete(&dev);
    return 0;
}

/* getppid() of ours with RL_CTL_SYNC = dev: read the counter, set every slot's shadow. */
TRACEPOINT_PROBE(syscalls, sys_enter_getppid)
{
    if ((bpf_get_current_pid_tgid() >> 32) != SELF_TGID)
        return 0;
    int k = RL_CTL_SYNC;
    u64 *req = ctl.lookup(&k);
    if (!req || !*req)
        return 0;
    u64 dev = *req;
    *req = 0;
    k = RL_CTL_SYNCED;
    u64 *status = ctl.lookup(&k);
    struct watched *w = watched.lookup(&dev);
    if (!w) {
        if (status)
            *status = RL_SYNC_UNWATCHED;
        return 0;
    }
    if (status)
        *status = RL_SYNC_DONE;
    struct refleak_event *ev = new_event(0, RL_EV_SYNC);
    if (!ev)
        return 0;
    ev->dev = dev;
    ev->aux = w->ref;
    ev->flags = w->flags;
    ev->level = read_level(dev, w->ref, 1);
    events.perf_submit(args, ev, sizeof(*ev));
    return 0;
}

#ifdef WATCH
/* One more run of on_watch for ADDR on this CPU (and whether a sync was under way). */
static __always_inline void count_run(u64 addr)
{
    struct run_count *r = watch_runs.lookup(&addr);
    if (!r) {
        struct run_count zero = {};
        watch_runs.update(&addr, &zero);
        r = watch_runs.lookup(&addr);
        if (!r)
            return;
    }
    r->runs++;
    int k = RL_CTL_SYNC;
    u64 *syncing = ctl.lookup(&k);
    if (syncing && *syncing)
        r->in_sync++;
}

/* A write to a watched counter slot; the trap comes after it. */
int on_watch(struct bpf_perf_event_data *ctx)
{
    u64 addr = ctx->addr;
    count_run(addr);
    struct slot *s = slots.lookup(&addr);
    if (!s)
        return 0;
    u64 dev = s->dev;
    if (!watched.lookup(&dev))
        return 0;
    s32 v = 0;
    bpf_probe_read(&v, sizeof(v), (void *)addr);
    s32 delta = v - s->value;
    s->value = v;
    struct refleak_event *ev = new_event(1, RL_EV_REF);
    if (!ev)
        return 0;
    ev->dev = dev;
    ev->obj = addr;
    ev->aux = (u64)(s64)v;
    ev->delta = delta;
    ev->strategy = RL_STRAT_WATCH;
    if (delta > 1 || delta < -1)
        ev->flags = RL_F_GAP;
    ev->kstack = stacks.get_stackid(ctx, 0);
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}
#endif

/* ---- holder objects ---------------------------------------------------------------------------- */

static __always_inline void holder_new(void *ctx, u32 kind, u64 obj, u64 dev, s32 kstack)
{
    struct holder h = {.dev = dev, .kind = kind};
    if (holders.lookup(&obj))
        return;       /* already known (the neigh constructor may return an existing entry) */
    if (holders.update(&obj, &h) != 0) {
        count_drop(ctx);
        return;
    }
    struct refleak_event *ev = new_event(0, RL_EV_HOLDER_NEW);
    if (!ev)
        return;
    ev->dev = dev;
    ev->obj = obj;
    ev->kind = kind;
    ev->kstack = kstack;
    events.perf_submit(ctx, ev, sizeof(*ev));
}

static __always_inline void holder_end(void *ctx, u64 obj, u32 func)
{
    struct holder *h = holders.lookup(&obj);
    if (!h)
        return;
    struct refleak_event *ev = new_event(0, RL_EV_HOLDER_END);
    if (ev) {
        ev->dev = h->dev;
        ev->obj = obj;
        ev->kind = h->kind;
        ev->func = func;
        ev->kstack = stacks.get_stackid(ctx, 0);
        events.perf_submit(ctx, ev, sizeof(*ev));
    }
    holders.delete(&obj);
}

/* Entry of a creating function: remember the device and the stack until it returns the object. */
static __always_inline void creating_entry(struct pt_regs *ctx, u32 kind, u64 dev, u64 obj)
{
    if (dev && !watched.lookup(&dev))
        return;
    u64 key = ((u64)kind << 32) | (u32)bpf_get_current_pid_tgid();
    struct pending p = {.dev = dev, .obj = obj, .kind = kind, .ts_ns = bpf_ktime_get_ns()};
    p.kstack = stacks.get_stackid(ctx, 0);
    creating.update(&key, &p);
}

static __always_inline struct pending *creating_return(u32 kind, u64 *key)
{
    *key = ((u64)kind << 32) | (u32)bpf_get_current_pid_tgid();
    return creating.lookup(key);
}

static __always_inline int is_object(u64 p)
{
    return p != 0 && p < (u64)-4095;    /* not NULL, not an ERR_PTR */
}

#ifdef HOLD_FNHE
/* kprobe rt_bind_exception(rt, fnhe, ..) or rt_set_nexthop(rt, daddr, res, fnhe, ..). */
int fnhe_entry(struct pt_regs *ctx)
{
    u64 rt = PT_REGS_PARM1(ctx);
#if FNHE_ARG == 2
    u64 fnhe = PT_REGS_PARM2(ctx);
#else
    u64 fnhe = PT_REGS_PARM4(ctx);
#endif
    if (!is_object(fnhe) || !holders.lookup(&rt))
        return 0;
    u32 tid = bpf_get_current_pid_tgid();
    struct fnhe_call c = {.rt = rt, .fnhe = fnhe};
    binding.update(&tid, &c);
    return 0;
}

/* Its return: bound when the exception's cached route is now this dst. */
int fnhe_return(struct pt_regs *ctx)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct fnhe_call *c = binding.lookup(&tid);
    if (!c)
        return 0;
    u64 rt = c->rt, fnhe = c->fnhe;
    binding.delete(&tid);
    struct holder *h = holders.lookup(&rt);
    if (!h)
        return 0;
    u32 flags = 0;
    if (read_u64(fnhe + OFF_FNHE_RTH_INPUT) == rt)
        flags = RL_F_INPUT;
    else if (read_u64(fnhe + OFF_FNHE_RTH_OUTPUT) != rt)
        return 0;
    struct refleak_event *ev = new_event(0, RL_EV_FNHE);
    if (!ev)
        return 0;
    ev->dev = h->dev;
    ev->obj = rt;
    ev->aux = fnhe;
    ev->kind = h->kind;
    ev->flags = flags;
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}
#endif

/* The return of a creating function: the object from the return value, or from the entry. */
static __always_inline void created(struct pt_regs *ctx, u32 kind, u64 obj, u64 dev_offset)
{
    u64 key;
    struct pending *p = creating_return(kind, &key);
    if (!p)
        return;
    struct pending c = *p;
    creating.delete(&key);
    if (!is_object(obj))
        return;
    u64 dev = read_u64(obj + dev_offset);
    if (!dev || (c.dev && dev != c.dev) || !watched.lookup(&dev))
        return;
    holder_new(ctx, kind, obj, dev, c.kstack);
}

#ifdef HOLD_DST
/* kprobe dst_alloc(ops, dev, ...): it returns a dst that holds dev (dst_init is inlined into it). */
int dst_alloc_entry(struct pt_regs *ctx)
{
    u64 dev = PT_REGS_PARM2(ctx);
    if (dev)
        creating_entry(ctx, RL_HOLDER_DST, dev, 0);
    return 0;
}

int dst_alloc_return(struct pt_regs *ctx)
{
    created(ctx, RL_HOLDER_DST, PT_REGS_RC(ctx), OFF_DST_DEV);
    return 0;
}

/* kprobe dst_init(dst, ops, dev, ...): where it is a call of its own, the dst holds dev from here. */
int dst_init_entry(struct pt_regs *ctx)
{
    u64 dst = PT_REGS_PARM1(ctx), dev = PT_REGS_PARM3(ctx);
    if (!dev || !watched.lookup(&dev))
        return 0;
    holder_new(ctx, RL_HOLDER_DST, dst, dev, stacks.get_stackid(ctx, 0));
    return 0;
}

/* kprobe dst_dev_put(dst): the dst moves to blackhole_netdev (6.x) and drops its device. */
int dst_dev_put_entry(struct pt_regs *ctx)
{
    holder_end(ctx, PT_REGS_PARM1(ctx), RL_END_DST_DEV_PUT);
    return 0;
}

/* kprobe dst_destroy(dst): the dst is freed and drops its device. */
int dst_destroy_entry(struct pt_regs *ctx)
{
    holder_end(ctx, PT_REGS_PARM1(ctx), RL_END_DST_DESTROY);
    return 0;
}
#endif

#ifdef HOLD_NEIGH
/* kprobe ___neigh_create(tbl, pkey, dev, ...) (4.19+) or __neigh_create(tbl, pkey, dev, want_ref) (3.10) */
int neigh_create_entry(struct pt_regs *ctx)
{
    creating_entry(ctx, RL_HOLDER_NEIGH, PT_REGS_PARM3(ctx), 0);
    return 0;
}

int neigh_create_return(struct pt_regs *ctx)
{
    created(ctx, RL_HOLDER_NEIGH, PT_REGS_RC(ctx), OFF_NEIGH_DEV);
    return 0;
}

int neigh_destroy_entry(struct pt_regs *ctx)
{
    holder_end(ctx, PT_REGS_PARM1(ctx), RL_END_NEIGH_DESTROY);
    return 0;
}
#endif

#ifdef HOLD_IN_DEV
/* kprobe inetdev_init(dev) */
int in_dev_init_entry(struct pt_regs *ctx)
{
    creating_entry(ctx, RL_HOLDER_IN_DEV, PT_REGS_PARM1(ctx), 0);
    return 0;
}

int in_dev_init_return(struct pt_regs *ctx)
{
    created(ctx, RL_HOLDER_IN_DEV, PT_REGS_RC(ctx), OFF_IN_DEV_DEV);
    return 0;
}

int in_dev_destroy_entry(struct pt_regs *ctx)
{
    holder_end(ctx, PT_REGS_PARM1(ctx), RL_END_IN_DEV_DESTROY);
    return 0;
}
#endif

#ifdef HOLD_INET6_DEV
/* kprobe ipv6_add_dev(dev) */
int inet6_dev_add_entry(struct pt_regs *ctx)
{
    creating_entry(ctx, RL_HOLDER_INET6_DEV, PT_REGS_PARM1(ctx), 0);
    return 0;
}

int inet6_dev_add_return(struct pt_regs *ctx)
{
    created(ctx, RL_HOLDER_INET6_DEV, PT_REGS_RC(ctx), OFF_INET6_DEV_DEV);
    return 0;
}

int inet6_dev_destroy_entry(struct pt_regs *ctx)
{
    holder_end(ctx, PT_REGS_PARM1(ctx), RL_END_INET6_DEV_DESTROY);
    return 0;
}
#endif

#ifdef HOLD_FIB_NH
/* kprobe fib_check_nh(net, nh, table, scope, extack): on success nh holds its device. */
int fib_nh_check_entry(struct pt_regs *ctx)
{
    creating_entry(ctx, RL_HOLDER_FIB_NH, 0, PT_REGS_PARM2(ctx));
    return 0;
}

int fib_nh_check_return(struct pt_regs *ctx)
{
    u64 key;
    struct pending *p = creating_return(RL_HOLDER_FIB_NH, &key);
    if (!p)
        return 0;
    u64 nhc = p->obj + OFF_FIB_NH_COMMON;
    s32 kstack = p->kstack;
    creating.delete(&key);
    if (PT_REGS_RC(ctx) != 0)
        return 0;
    u64 dev = read_u64(nhc + OFF_NHC_DEV);
    if (!dev || !watched.lookup(&dev))
        return 0;
    holder_new(ctx, RL_HOLDER_FIB_NH, nhc, dev, kstack);
    return 0;
}

/* kprobe fib_nh_common_release(nhc) */
int fib_nh_release_entry(struct pt_regs *ctx)
{
    holder_end(ctx, PT_REGS_PARM1(ctx), RL_END_FIB_NH_RELEASE);
    return 0;
}
#endif

#ifdef TRACKER
static __always_inline void tracker_event(struct pt_regs *ctx, s32 delta)
{
    u64 dev = PT_REGS_PARM1(ctx) - OFF_DEV_REFCNT_TRACKER;
    if (!watched.lookup(&dev))
        return;
    struct refleak_event *ev = new_event(0, RL_EV_REF);
    if (!ev)
        return;
    ev->dev = dev;
    ev->obj = PT_REGS_PARM2(ctx);
    ev->delta = delta;
    ev->strategy = RL_STRAT_TRACKER;
    ev->kstack = stacks.get_stackid(ctx, 0);
    events.perf_submit(ctx, ev, sizeof(*ev));
}

/* kprobe ref_tracker_alloc(dir, trackerp, gfp): dir is &dev->refcnt_tracker for a device. */
int tracker_alloc_entry(struct pt_regs *ctx)
{
    tracker_event(ctx, 1);
    return 0;
}

int tracker_free_entry(struct pt_regs *ctx)
{
    tracker_event(ctx, -1);
    return 0;
}
#endif

#ifdef INLINE
/* One register of pt_regs by its index (x86-64 layout: struct pt_regs is 21 u64). A probe read:
 * the verifier refuses loads from ctx at a variable offset. */
static __always_inline u64 reg_value(struct pt_regs *ctx, u32 reg)
{
    u64 v = 0;
    if (reg < 21)
        bpf_probe_read(&v, sizeof(v), (u8 *)ctx + reg * 8);
    return v;
}

/* kprobe at an inlined hold/put site: int3 leaves ip one byte past the probed address. */
int site_entry(struct pt_regs *ctx)
{
    u64 ip = PT_REGS_IP(ctx) - 1;
    struct refleak_site *site = sites.lookup(&ip);
    if (!site)
        return 0;
    u64 dev = reg_value(ctx, site->reg) + site->offset;
    if (site->loc == RL_LOC_BREG)
        dev = read_u64(dev);
    if (!dev || !watched.lookup(&dev))
        return 0;
    struct refleak_event *ev = new_event(0, RL_EV_REF);
    if (!ev)
        return 0;
    ev->dev = dev;
    ev->obj = ip;
    ev->delta = site->delta;
    ev->strategy = RL_STRAT_INLINE;
    ev->kstack = stacks.get_stackid(ctx, 0);
    events.perf_submit(ctx, ev, sizeof(*ev));
    return 0;
}
#endif
