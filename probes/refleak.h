/*
 * refleak: the one event record of refleak.bpf.c, shared with Python (bcc decodes it from this
 * definition; bpftools/tools/refleak.py mirrors the constants). One flat struct of plain types for
 * every kind of record: bcc decodes neither unions nor nested structs.
 */
#ifndef BPFTOOLS_REFLEAK_H
#define BPFTOOLS_REFLEAK_H

/* refleak_event.type */
#define RL_EV_DEVICE 1      /* a device to watch: found by name (lookup) or registered after start */
#define RL_EV_SYNC 2        /* the device's reference count read now (level), the watch baseline */
#define RL_EV_REF 3         /* one reference taken (+1) or dropped (-1): delta, strategy, stack */
#define RL_EV_HOLDER_NEW 4  /* a kernel object now pins the device (kind, obj), its creation stack */
#define RL_EV_HOLDER_END 5  /* that object let go of the device (func says where) */
#define RL_EV_FNHE 6        /* a dst holder was bound to a route exception (aux = the fnhe) */
#define RL_EV_UNREGISTER 7  /* unregister_netdevice_queue() on the device (level = count then) */
#define RL_EV_FREE 8        /* free_netdev() on the device (level = count then): watch over */
#define RL_EV_DROPPED 9     /* a BPF map was full: records dropped so far in `level` */

/* refleak_event.strategy of RL_EV_REF */
#define RL_STRAT_WATCH 1    /* hardware watchpoint on the counter: delta from the slot's shadow */
#define RL_STRAT_TRACKER 2  /* ref_tracker_alloc/free (CONFIG_NET_DEV_REFCNT_TRACKER): obj = tracker */
#define RL_STRAT_INLINE 3   /* kprobe on an inlined dev_hold/dev_put site from debug info: obj = site */

/* refleak_event.kind of holder records */
#define RL_HOLDER_DST 1     /* struct dst_entry: dst_init .. dst_dev_put / dst_destroy */
#define RL_HOLDER_NEIGH 2   /* struct neighbour: ___neigh_create (__neigh_create on 3.10) .. neigh_destroy */
#define RL_HOLDER_IN_DEV 3  /* struct in_device: inetdev_init .. in_dev_finish_destroy */
#define RL_HOLDER_INET6_DEV 4 /* struct inet6_dev: ipv6_add_dev .. in6_dev_finish_destroy */
#define RL_HOLDER_FIB_NH 5  /* struct fib_nh: fib_check_nh .. fib_nh_common_release */

/* refleak_event.func of RL_EV_HOLDER_END: which function let go */
#define RL_END_DST_DEV_PUT 1
#define RL_END_DST_DESTROY 2
#define RL_END_NEIGH_DESTROY 3
#define RL_END_IN_DEV_DESTROY 4
#define RL_END_INET6_DEV_DESTROY 5
#define RL_END_FIB_NH_RELEASE 6

/* refleak_event.flags */
#define RL_F_PCPU 1         /* DEVICE: per-cpu counter (dev->pcpu_refcnt); else one refcount_t */
#define RL_F_REGISTERED 2   /* DEVICE: seen in register_netdevice (created after start) */
#define RL_F_GAP 4          /* REF (watch): the slot moved by more than one since the last hit
                               (0: a trap without a change, seen under QEMU's emulation) */
#define RL_F_INPUT 8        /* FNHE: bound as the exception's input route (else output) */

#define RL_COMM_LEN 16
#define MAX_CPUS 64         /* possible CPUs whose per-cpu counter slots the watch covers */
#define RL_IFNAMSIZ 16

struct refleak_event {
    u64 ts_ns;
    u64 dev;           /* struct net_device * */
    u64 obj;           /* REF: watched address / tracker / site; HOLDER, FNHE: the holder object */
    u64 aux;           /* DEVICE: counter address (pcpu pointer or &dev_refcnt); REF(watch): slot value
                          after the write; FNHE: struct fib_nh_exception * */
    u64 cgroup_id;     /* bpf_get_current_cgroup_id(), 0 where the kernel lacks it */
    s64 level;         /* DEVICE, SYNC, UNREGISTER, FREE: the reference count (sum of the slots) */
    u32 type;          /* RL_EV_* */
    u32 tgid;
    u32 tid;
    u32 cpu;
    s32 kstack;        /* stack id in `stacks`, negative when none was taken */
    s32 delta;         /* REF: +1 / -1 (watch: the slot's change, see RL_F_GAP) */
    u32 strategy;      /* REF: RL_STRAT_* */
    u32 kind;          /* HOLDER, FNHE: RL_HOLDER_* */
    u32 func;          /* HOLDER_END: RL_END_* */
    u32 flags;         /* RL_F_* */
    u32 ifindex;       /* DEVICE */
    u32 netns;         /* DEVICE: inode of the device's network namespace */
    char comm[RL_COMM_LEN];
    char name[RL_IFNAMSIZ];  /* DEVICE: the device's name */
};

/* Control slots (array `ctl`) that user space writes. */
#define RL_CTL_LOOKUP 0     /* 1 while user space looks devices up by name (dev_get_flags hook armed) */
#define RL_CTL_SYNC 1       /* the device whose counter the next getppid() of ours reads (0: none) */
#define RL_CTL_SYNCED 2     /* what that read did: RL_SYNC_* */
#define RL_CTL_N 3

#define RL_SYNC_DONE 1      /* the counter was read and the shadows set */
#define RL_SYNC_UNWATCHED 2 /* the device is not in `watched` (freed, or never watched) */

/* Inline-site records (map `sites`, filled by user space): how to find the device at a site. */
#define RL_LOC_REG 1        /* the device pointer is register `reg` + `offset` */
#define RL_LOC_BREG 2       /* the device pointer is in memory at register `reg` + `offset` */
struct refleak_site {
    s32 delta;
    u32 reg;             /* index of the register in struct pt_regs, as an array of u64 */
    s64 offset;
    u32 loc;             /* RL_LOC_* */
    u32 pad;
};

#endif
