/* mempoolwait: constants of the sleep section of iojitter.bpf.c (Python mirrors them in tools/mempoolwait.py). */
#ifndef BPFTOOLS_MEMPOOLWAIT_H
#define BPFTOOLS_MEMPOOLWAIT_H

/* iostall_event.flags of EV_SLEEP */
#define SLEEP_F_MEMPOOL 1     /* kprobe mode: measured inside mempool_alloc, ended by finish_wait(&pool->wait) */
#define SLEEP_F_SCHED 2       /* tracepoint mode: a sched_switch D-state sleep (caller decides from the stack) */
#define SLEEP_F_JIFFIES 64    /* kprobe mode: `jiffies` holds the sleep's length in jiffies (bpf_jiffies64, 5.5+) */
/* iostall_event.flags of EV_MEMPOOL_ALLOC */
#define MPALLOC_F_NULL 1      /* mempool_alloc returned NULL (the caller could not sleep) */

/* kprobe mode: a thread inside mempool_alloc */
struct mp_call {
    u64 pool;
    u64 gfp;
    u64 entry_ns;
    u64 sleep_ns;        /* start of the current io_schedule_timeout, 0 when not asleep */
    u64 waited_ns;
    s64 timeout;         /* argument of the current io_schedule_timeout */
    s64 sleeps;
    s32 kstack;          /* stack at the first sleep */
    s32 pad;
    u64 sleep_jiffies;   /* jiffies at the start of the current sleep (HAVE_JIFFIES64) */
};

/* tracepoint mode: a thread switched out in D state */
struct dsleep {
    u64 start_ns;
    s64 state;
    u32 tgid;
    s32 kstack;
    char comm[16];
};

#endif
