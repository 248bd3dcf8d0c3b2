/* kmemsnoop: the one definition of the event shared by the BPF program and Python (via bcc). */
#ifndef BPFTOOLS_KMEMSNOOP_H
#define BPFTOOLS_KMEMSNOOP_H

#define KMEM_PATH_MAX 256
#define KMEM_VALUE_MAX 32
#define KMEM_OP_OPEN 1
#define KMEM_OP_WRITE 2

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
    char comm[16];
    char path[KMEM_PATH_MAX];
    char value[KMEM_VALUE_MAX];
};

#endif
