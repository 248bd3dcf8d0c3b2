/* netdevwait: the one definition of the event shared by netdevwait.bpf.c and Python (via bcc). */
#ifndef BPFTOOLS_NETDEVWAIT_H
#define BPFTOOLS_NETDEVWAIT_H

#define NDW_ROUND 1       /* a NETDEV_UNREGISTER rebroadcast for a device waiting in unregistration */
#define NDW_FREED 2       /* free_netdev() of an unregistered device: its wait is over */
#define NDW_LINK 3        /* one notifier block of the chain a rebroadcast runs (the walk, in chain order) */
#define NDW_CALL 4        /* one subscriber's callback run for a waiting device: time, return, count */

#define NDW_CHAIN_GLOBAL 0     /* netdev_chain */
#define NDW_CHAIN_NETNS 1      /* the device's namespace's own chain (net->netdev_chain, v5.7+) */
#define NDW_LINK_TRUNCATED 1   /* flags: no block; the walk stopped at NDW_MAX_LINKS with blocks left */
#define NDW_MAX_LINKS 64

/* NETDEV_UNREGISTER is 6 in include/linux/netdevice.h from 3.10 (#define) to 6.18 (enum netdev_cmd);
 * NETREG_UNREGISTERED is 3 (NETREG_UNINITIALIZED = 0, REGISTERED, UNREGISTERING, UNREGISTERED). */
#define NDW_NETDEV_UNREGISTER 6
#define NDW_NETREG_UNREGISTERED 3

struct netdevwait_event {
    u64 ts_ns;
    u64 dev;          /* the struct net_device */
    u32 type;         /* NDW_* */
    s32 count;        /* the reference count, summed as netdev_refcnt_read() does */
    s32 ifindex;
    u32 netns;        /* inode of the device's network namespace (dev_net(dev)->ns.inum) */
    u32 tgid;         /* the task that rebroadcasts or frees: the waiting kworker */
    u32 tid;
    char name[16];    /* IFNAMSIZ */
    char comm[16];
    /* NDW_LINK and NDW_CALL: the subscriber */
    u64 nb;           /* the struct notifier_block */
    u64 call;         /* its notifier_call */
    u64 dur_ns;       /* NDW_CALL: time in the callback */
    s32 priority;
    s32 ret;          /* NDW_CALL: what it returned (NOTIFY_DONE, NOTIFY_OK, NOTIFY_STOP_MASK | ...) */
    s32 count_after;  /* NDW_CALL: the reference count when it returned (count: when it was called) */
    u16 index;        /* NDW_LINK: position in its chain, from 0 (one walk: one ts_ns) */
    u8 chain;         /* NDW_LINK: NDW_CHAIN_* */
    u8 flags;         /* NDW_LINK: NDW_LINK_TRUNCATED */
};

#endif
