/*
 * netdevwait: network devices stuck in unregistration, seen at the kernel's rebroadcasts.
 *
 * netdev_run_todo() marks each device NETREG_UNREGISTERED and waits in netdev_wait_allrefs() (3.10,
 * 5.10) or netdev_wait_allrefs_any() (6.x) until only the device's own references remain; about once
 * a second it rebroadcasts NETDEV_UNREGISTER through call_netdevice_notifiers(), which reaches
 * raw_notifier_call_chain(&netdev_chain, NETDEV_UNREGISTER, info) with info->dev first. The wait
 * functions and netdev_refcnt_read() are inlined into netdev_run_todo on Debian's 5.10, so the
 * notifier call (kernel/notifier.c, never inlined into net/core) is the hook, and the count is summed
 * here as netdev_refcnt_read() sums it. The first notification of an unregistration comes while the
 * device is still NETREG_UNREGISTERING, so only waits are reported.
 *
 *  - kprobe raw_notifier_call_chain (on_notify): one NDW_ROUND per rebroadcast and device;
 *  - kprobe free_netdev (on_free): NDW_FREED, the end of the wait (netdev_run_todo frees devices
 *    with needs_free_netdev itself; other drivers free theirs after unregister returns);
 *  - with OFF_NB_*: at each rebroadcast, the notifier blocks of the chain it runs (the namespace's
 *    chain first on v5.7+, then netdev_chain) as NDW_LINK events; the tool then attaches
 *    on_sub_entry/on_sub_return to each callback found, which time each call made for a waiting
 *    device, with its return value and the count before and after (NDW_CALL): a subscriber that
 *    drops a reference shows as a count that went down across its call.
 *
 * Parameters (-D integers from BTF, kallsyms and sysfs, validated in Python): OFF_DEV_NAME,
 * OFF_DEV_IFINDEX, OFF_DEV_NET, OFF_NET_NS, OFF_NS_INUM, OFF_DEV_REG_STATE; either
 * OFF_DEV_PCPU_REFCNT with PER_CPU_OFFSET (address of __per_cpu_offset[]) and NCPUS (possible CPUs),
 * or OFF_DEV_REFCNT (refcount_t dev_refcnt, 5.13+ without CONFIG_PCPU_DEV_REFCNT); NETDEV_CHAIN
 * (address of the global netdev_chain), when kallsyms lists data symbols; OFF_NB_CALL, OFF_NB_NEXT,
 * OFF_NB_PRIORITY (struct notifier_block) to walk the chain; OFF_NET_NETDEV_CHAIN (net->netdev_chain,
 * v5.7+). x86-64.
 */
#include <uapi/linux/ptrace.h>
#include "netdevwait.h"

#define NDW_U64_(x) x##ULL
#define NDW_U64(x) NDW_U64_(x)
#define NDW_MAX_CPUS 1024

BPF_PERF_OUTPUT(events);

/* netdev_refcnt_read(): the per-cpu counters summed over the possible CPUs, or the refcount_t */
static __always_inline s32 refcount_of(u64 dev)
{
#ifdef OFF_DEV_PCPU_REFCNT
    u64 pcpu = 0;
    s32 sum = 0;
    bpf_probe_read(&pcpu, sizeof(pcpu), (void *)(dev + OFF_DEV_PCPU_REFCNT));
#pragma unroll   /* no back-edge for verifiers before 5.3 (bounded loops); ~10 instructions per CPU */
    for (u32 cpu = 0; cpu < NCPUS && cpu < NDW_MAX_CPUS; cpu++) {
        u64 offset = 0;
        s32 part = 0;
        bpf_probe_read(&offset, sizeof(offset), (void *)(NDW_U64(PER_CPU_OFFSET) + 8 * (u64)cpu));
        bpf_probe_read(&part, sizeof(part), (void *)(pcpu + offset));
        sum += part;
    }
    return sum;
#else
    s32 count = 0;
    bpf_probe_read(&count, sizeof(count), (void *)(dev + OFF_DEV_REFCNT));
    return count;
#endif
}

/* The device's identity and count into EV; false unless it waits (NETREG_UNREGISTERED). NET: its netns. */
static __always_inline bool fill(struct netdevwait_event *ev, u64 dev, u32 type, u64 *net)
{
    u8 state = 0;
    bpf_probe_read(&state, sizeof(state), (void *)(dev + OFF_DEV_REG_STATE));
    if (state != NDW_NETREG_UNREGISTERED)
        return false;
    u64 id = bpf_get_current_pid_tgid();
    ev->ts_ns = bpf_ktime_get_ns();
    ev->type = type;
    ev->dev = dev;
    ev->tgid = id >> 32;
    ev->tid = (u32)id;
    ev->count = refcount_of(dev);
    bpf_probe_read(&ev->name, sizeof(ev->name), (void *)(dev + OFF_DEV_NAME));
    bpf_probe_read(&ev->ifindex, sizeof(ev->ifindex), (void *)(dev + OFF_DEV_IFINDEX));
    bpf_probe_read(net, sizeof(*net), (void *)(dev + OFF_DEV_NET));      /* possible_net_t: the pointer */
    if (*net)
        bpf_probe_read(&ev->netns, sizeof(ev->netns), (void *)(*net + OFF_NET_NS + OFF_NS_INUM));
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
    return true;
}

#ifdef OFF_NB_CALL
/* The notifier blocks of the chain at HEAD (raw_notifier_head: the first block at offset 0), in the
 * order notifier_call_chain() runs them, as NDW_LINK events: bounded, unrolled for pre-5.3 verifiers. */
static __always_inline void walk_chain(struct pt_regs *ctx, struct netdevwait_event *ev, u64 head, u8 chain)
{
    u64 nb = 0;
    bpf_probe_read(&nb, sizeof(nb), (void *)head);
    ev->type = NDW_LINK;
    ev->chain = chain;
#pragma unroll
    for (u32 i = 0; i < NDW_MAX_LINKS; i++) {
        u64 next = 0;
        if (!nb)
            break;
        ev->nb = nb;
        ev->index = i;
        bpf_probe_read(&ev->call, sizeof(ev->call), (void *)(nb + OFF_NB_CALL));
        bpf_probe_read(&ev->priority, sizeof(ev->priority), (void *)(nb + OFF_NB_PRIORITY));
        bpf_probe_read(&next, sizeof(next), (void *)(nb + OFF_NB_NEXT));
        events.perf_submit(ctx, ev, sizeof(*ev));
        nb = next;
    }
    if (nb) {                                /* more blocks than NDW_MAX_LINKS: say so */
        ev->nb = ev->call = 0;
        ev->priority = 0;
        ev->index = NDW_MAX_LINKS;
        ev->flags = NDW_LINK_TRUNCATED;
        events.perf_submit(ctx, ev, sizeof(*ev));
    }
}
#endif

int on_notify(struct pt_regs *ctx)
{
    u64 head = PT_REGS_PARM1(ctx), dev = 0, net = 0;
    u8 chain = NDW_CHAIN_GLOBAL;
    if (PT_REGS_PARM2(ctx) != NDW_NETDEV_UNREGISTER)
        return 0;
#if defined(NETDEV_CHAIN) && !defined(OFF_NET_NETDEV_CHAIN)
    if (head != NDW_U64(NETDEV_CHAIN))                   /* the global chain: once per notification */
        return 0;
#endif
    bpf_probe_read(&dev, sizeof(dev), (void *)PT_REGS_PARM3(ctx));
    if (!dev)
        return 0;
    struct netdevwait_event ev = {};
    if (!fill(&ev, dev, NDW_ROUND, &net))
        return 0;
#ifdef OFF_NET_NETDEV_CHAIN
    /* call_netdevice_notifiers_info() runs the namespace's chain first, then the global one (v5.7+) */
    if (net && head == net + OFF_NET_NETDEV_CHAIN)
        chain = NDW_CHAIN_NETNS;
#ifdef NETDEV_CHAIN
    else if (head != NDW_U64(NETDEV_CHAIN))
        return 0;
#endif
#endif
    if (chain == NDW_CHAIN_GLOBAL)
        events.perf_submit(ctx, &ev, sizeof(ev));
#ifdef OFF_NB_CALL
    walk_chain(ctx, &ev, head, chain);
#endif
    return 0;
}

int on_free(struct pt_regs *ctx)
{
    u64 net = 0;
    struct netdevwait_event ev = {};
    if (fill(&ev, PT_REGS_PARM1(ctx), NDW_FREED, &net))
        events.perf_submit(ctx, &ev, sizeof(ev));
    return 0;
}

#ifdef OFF_NB_CALL
/* Subscribers, attached by the tool to each callback its walks found: notifier_call(nb, val, info) */
struct ndw_entry {
    u64 ts_ns;
    u64 nb;
    u64 dev;
    s32 count;
};
BPF_HASH(entries, u32, struct ndw_entry, 1024);     /* thread -> the callback it runs now */

int on_sub_entry(struct pt_regs *ctx)
{
    u64 dev = 0;
    u8 state = 0;
    if (PT_REGS_PARM2(ctx) != NDW_NETDEV_UNREGISTER)
        return 0;
    bpf_probe_read(&dev, sizeof(dev), (void *)PT_REGS_PARM3(ctx));     /* info->dev */
    if (!dev)
        return 0;
    bpf_probe_read(&state, sizeof(state), (void *)(dev + OFF_DEV_REG_STATE));
    if (state != NDW_NETREG_UNREGISTERED)
        return 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ndw_entry entry = {};
    entry.nb = PT_REGS_PARM1(ctx);
    entry.dev = dev;
    entry.count = refcount_of(dev);
    entry.ts_ns = bpf_ktime_get_ns();
    entries.update(&tid, &entry);
    return 0;
}

int on_sub_return(struct pt_regs *ctx)
{
    u64 now = bpf_ktime_get_ns(), net = 0;
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct ndw_entry *entry = entries.lookup(&tid);
    if (!entry)
        return 0;
    struct ndw_entry seen = *entry;
    entries.delete(&tid);
    struct netdevwait_event ev = {};
    if (!fill(&ev, seen.dev, NDW_CALL, &net))
        return 0;
    ev.count_after = ev.count;
    ev.count = seen.count;
    ev.ts_ns = seen.ts_ns;
    ev.dur_ns = now - seen.ts_ns;
    ev.nb = seen.nb;
    ev.ret = (s32)PT_REGS_RC(ctx);
    bpf_probe_read(&ev.call, sizeof(ev.call), (void *)(seen.nb + OFF_NB_CALL));
    bpf_probe_read(&ev.priority, sizeof(ev.priority), (void *)(seen.nb + OFF_NB_PRIORITY));
    events.perf_submit(ctx, &ev, sizeof(ev));
    return 0;
}
#endif
