/* slabfail: constants of the slab-failure section of iojitter.bpf.c (Python mirrors them in tools/slabfail.py). */
#ifndef BPFTOOLS_SLABFAIL_H
#define BPFTOOLS_SLABFAIL_H

/* iostall_event.func of EV_SLAB_FAIL: which tracepoint saw the NULL */
#define SLAB_SRC_CACHE 1     /* kmem:kmem_cache_alloc */
#define SLAB_SRC_KMALLOC 2   /* kmem:kmalloc */

/* iostall_event.flags */
#define SLAB_F_ACCOUNTED 1        /* the tracepoint said accounted=true (charged to a memory cgroup) */
#define SLAB_F_ACCOUNTED_KNOWN 2  /* the tracepoint has an `accounted` field */
#define SLAB_F_NAME_FROM_TP 4     /* iostall_event.name came from the tracepoint's `name` field */
#define SLAB_F_NAME_FROM_CACHE 8  /* iostall_event.name was read from kmem_cache->name (kprobe mode) */
#define SLAB_F_OOM_ARGS 16        /* EV_SLUB_OOM: cache, gfp and node are the real arguments */

/* kprobe mode: the caches of the allocator calls a thread is inside, innermost last, matched to the
 * tracepoint by the return address (the tracepoint's call_site is the allocator's _RET_IP_). A stack:
 * a failed charge may reclaim or run the memcg OOM path, which allocates again before the tracepoint
 * of the outer call fires. */
#define SLAB_STACK 4            /* a power of two */
struct slab_call {
    u64 cache;
    u64 ret_ip;
};
struct slab_calls {
    u32 depth;
    u32 pad;
    struct slab_call c[SLAB_STACK];
};

#endif
