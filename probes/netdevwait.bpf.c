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
 *    with needs_free_netdev itself; other drivers free theirs after unregister returns).
 *
 * Parameters (-D integers from BTF, kallsyms and sysfs, validated in Python): OFF_DEV_NAME,
 * OFF_DEV_IFINDEX, OFF_DEV_NET, OFF_NET_NS, OFF_NS_INUM, OFF_DEV_REG_STATE; either
 * OFF_DEV_PCPU_REFCNT with PER_CPU_OFFSET (address of __per_cpu_offset[]) and NCPUS (possible CPUs),
 * or OFF_DEV_REFCNT (refcount_t dev_refcnt, 5.13+ without CONFIG_PCPU_DEV_REFCNT); NETDEV_CHAIN
 * (address of the global netdev_chain), when kallsyms lists data symbols. x86-64.
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

static __always_inline int emit(struct pt_regs *ctx, u64 dev, u32 type)
{
    u8 state = 0;
    bpf_probe_read(&state, sizeof(state), (void *)(dev + OFF_DEV_REG_STATE));
    if (state != NDW_NETREG_UNREGISTERED)
        return 0;
    struct netdevwait_event ev = {};
    u64 id = bpf_get_current_pid_tgid(), net = 0;
    ev.ts_ns = bpf_ktime_get_ns();
    ev.type = type;
    ev.dev = dev;
    ev.tgid = id >> 32;
    ev.tid = (u32)id;
    ev.count = refcount_of(dev);
    bpf_probe_read(&ev.name, sizeof(ev.name), (void *)(dev + OFF_DEV_NAME));
    bpf_probe_read(&ev.ifindex, sizeof(ev.ifindex), (void *)(dev + OFF_DEV_IFINDEX));
    bpf_probe_read(&net, sizeof(net), (void *)(dev + OFF_DEV_NET));      /* possible_net_t: the pointer */
    if (net)
        bpf_probe_read(&ev.netns, sizeof(ev.netns), (void *)(net + OFF_NET_NS + OFF_NS_INUM));
    bpf_get_current_comm(&ev.comm, sizeof(ev.comm));
    events.perf_submit(ctx, &ev, sizeof(ev));
    return 0;
}

int on_notify(struct pt_regs *ctx)
{
    u64 dev = 0;
    if (PT_REGS_PARM2(ctx) != NDW_NETDEV_UNREGISTER)
        return 0;
#ifdef NETDEV_CHAIN
    if (PT_REGS_PARM1(ctx) != NDW_U64(NETDEV_CHAIN))    /* the global chain: once per notification */
        return 0;
#endif
    bpf_probe_read(&dev, sizeof(dev), (void *)PT_REGS_PARM3(ctx));
    return dev ? emit(ctx, dev, NDW_ROUND) : 0;
}

int on_free(struct pt_regs *ctx)
{
    return emit(ctx, PT_REGS_PARM1(ctx), NDW_FREED);
}
