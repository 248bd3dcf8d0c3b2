/*
 * The one event record of the I/O-stall tools (slabfail, mempoolwait, writeslow, iojitter), shared by
 * the BPF program iojitter.bpf.c and Python (bcc decodes it from this definition). Not "io_event":
 * include/uapi/linux/aio_abi.h has one, which linux/fs.h pulls in.
 *
 * One flat struct for every kind of event because iojitter puts all of them in one perf buffer, and
 * bcc can decode only flat structs of plain types (no unions, no nested structs). Each kind uses the
 * fields its comment names; the others stay 0.
 */
#ifndef BPFTOOLS_IOSTALL_H
#define BPFTOOLS_IOSTALL_H

#define EV_SLAB_FAIL 1       /* a slab allocation returned NULL (slabfail) */
#define EV_SLUB_OOM 2        /* slab_out_of_memory() ran: the SLUB warning (slabfail, kprobe mode) */
#define EV_SLEEP 3           /* one uninterruptible sleep: a mempool wait or a D-state sleep (mempoolwait) */
#define EV_MEMPOOL_ALLOC 4   /* a mempool_alloc() that slept or was slow, at its return (mempoolwait, kprobe mode) */
#define EV_WRITEBACK 5       /* one writeback call over the threshold (writeslow) */
#define EV_DROPPED 6         /* the kernel side dropped records (a full map): 1st, 2nd, 4th, 8th... drop */

#define NAME_LEN 128         /* slab cache names: 3.10's per-memcg ones are ~85 bytes, e.g.
                                 kmalloc-1024(1793:<64 hex digits of the container id>) */
#define COMM_LEN 16

struct iostall_event {
    u64 ts_ns;          /* when the event ended (or happened), bpf_ktime_get_ns() */
    u64 start_ns;       /* sleep / writeback / mempool_alloc: when it started; 0 for point events */
    u64 ptr;            /* sleep, mempool_alloc: the mempool_t (kprobe mode); writeback kprobe: 1st argument */
    u64 cache;          /* slab: the struct kmem_cache pointer (kprobe mode), 0 when unknown */
    u64 call_site;      /* slab: the allocator's caller */
    u64 gfp;            /* slab, mempool_alloc: gfp mask as the kernel passed it */
    u64 bytes;          /* slab: bytes requested */
    u64 ino;            /* writeback: inode number */
    u64 cgroup_ino;     /* writeback: inode of the bdi_writeback's cgroup (cgroup writeback) */
    s64 nr_to_write;    /* writeback: pages asked for at the start */
    s64 written;        /* writeback: pages written; mempool_alloc: number of sleeps */
    s64 timeout;        /* sleep: io_schedule_timeout() argument in jiffies (kprobe mode) */
    s64 state;          /* sleep: prev_state of sched_switch (tracepoint mode) */
    u64 dropped;        /* EV_DROPPED: records dropped so far */
    u64 waited_ns;      /* mempool_alloc: total time asleep */
    u64 jiffies;        /* sleep (kprobe mode, HAVE_JIFFIES64): jiffies it lasted, the kernel's own clock */
    u32 type;           /* EV_* */
    u32 tgid;
    u32 tid;
    s32 kstack;         /* kernel stack id in `stacks`, or a negative errno when none was taken */
    u32 dev;            /* writeback: device, kernel encoding (major << 20 | minor) */
    u32 depth;          /* writeback: nesting depth on this thread, 0 = outermost */
    u32 func;           /* slab: SLAB_SRC_*; writeback: WB_SRC_* or the kprobe slot */
    u32 flags;          /* SLAB_F_* / SLEEP_F_* / WB_F_* */
    s32 node;           /* slab: NUMA node asked for, -1 = any */
    s32 ret;            /* writeback: return value (ext4_writepages_result) */
    char comm[COMM_LEN];
    char name[NAME_LEN]; /* slab: cache name; writeback: bdi name */
};

#endif
