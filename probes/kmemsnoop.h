/* kmemsnoop: the one definition of the event shared by the BPF program and Python (via bcc). */
#ifndef BPFTOOLS_KMEMSNOOP_H
#define BPFTOOLS_KMEMSNOOP_H

#define KMEM_PATH_MAX 256
#define KMEM_VALUE_MAX 32
#define KMEM_CGROUP_NAME_MAX 64
#define KMEM_OP_OPEN 1
#define KMEM_OP_WRITE 2
#define KMEM_OP_KERNEL 3   /* the kernel's kmem limit handler ran with no write(2) in flight (pwrite, writev...) */

/* KERNEL_HOOK values: which kernel function handles a write to memory.kmem.limit_in_bytes. */
#define HOOK_KMEM_LIMIT 1  /* 3.10 memcg_update_kmem_limit(struct cgroup *, u64 bytes) */
#define HOOK_KMEM_MAX 2    /* 4.x-5.15 memcg_update_kmem_max(struct mem_cgroup *, unsigned long pages) */
#define HOOK_CGROUP_WRITE 3 /* mem_cgroup_write(struct kernfs_open_file *, char *buf, ...), filtered by file name */

struct kmem_event {
    u64 ts_ns;
    s64 ret;          /* fd or -errno for opens; bytes or -errno for writes */
    u32 tgid;
    u32 tid;
    u32 op;           /* KMEM_OP_* */
    u32 flags;        /* open flags */
    s32 fd;
    u32 count;        /* bytes the writer asked to write */
    u64 cgroup_id;    /* cgroup2 id of the writer (0 without HAVE_CGROUP_ID) */
    u64 memcg_id;     /* MEMCG_FROM_CSS, 3.15+: kernfs id of the writer's memory cgroup, from its css_set */
    u64 kernel_arg;   /* the limit the kernel handler got: bytes (HOOK_KMEM_LIMIT) or pages (HOOK_KMEM_MAX) */
    s64 kernel_ret;   /* what the kernel handler returned */
    u32 kernel_hook;  /* HOOK_* that saw this write, 0 when none ran (or none is attached) */
    u32 pad;
    char comm[16];
    char path[KMEM_PATH_MAX];
    char value[KMEM_VALUE_MAX];
    char memcg_name[KMEM_CGROUP_NAME_MAX];   /* MEMCG_FROM_CSS before 3.15 (no kernfs): its directory name */
};

#endif
