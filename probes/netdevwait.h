/* netdevwait: the one definition of the event shared by netdevwait.bpf.c and Python (via bcc). */
#ifndef BPFTOOLS_NETDEVWAIT_H
#define BPFTOOLS_NETDEVWAIT_H

#define NDW_ROUND 1       /* a NETDEV_UNREGISTER rebroadcast for a device waiting in unregistration */
#define NDW_FREED 2       /* free_netdev() of an unregistered device: its wait is over */

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
};

#endif
