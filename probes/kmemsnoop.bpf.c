/*
 * kmemsnoop: opens and writes of cgroup v1 memory.kmem.* files, with the value written and the result.
 * Parameters (-D, validated as integers in Python): FILTER_TGID.
 * Syscall entry points: the syscalls:* tracepoints (BPF on them: 4.14+), or with SYSCALL_KPROBES the
 * functions Python attaches as kprobes and kretprobes on the kernel's syscall functions (syscall_*);
 * SYSCALL_WRAPPER when those are 4.17+'s __x64_sys_NAME(const struct pt_regs *).
 * Flags for tracepoints that not every architecture has: HAVE_SYS_OPEN, HAVE_SYS_DUP2;
 * HAVE_CGROUP_ID when the kernel has bpf_get_current_cgroup_id (4.18+); MEMCG_FROM_CSS also reads the
 * writer's memory cgroup from its css_set (compiled against this kernel's own headers).
 * KERNEL_HOOK=HOOK_* (kmemsnoop.h) adds kernel_write_entry/kernel_write_return, which Python attaches as a
 * kprobe/kretprobe on the kernel's kmem limit handler; HOOK_CGROUP_WRITE also needs the struct offsets
 * OFF_OF_KN (kernfs_open_file.kn) and OFF_KN_NAME (kernfs_node.name).
 */
#include <uapi/linux/ptrace.h>
#ifdef MEMCG_FROM_CSS
#include <linux/version.h>
#include <linux/sched.h>
#include <linux/cgroup.h>
#endif
#include "helpers_by_number.h"
#include "kmemsnoop.h"

struct pending {
    struct kmem_event ev;
};

BPF_PERF_OUTPUT(events);
BPF_PERCPU_ARRAY(scratch, struct pending, 1);
BPF_HASH(pending_by_tid, u32, struct pending, 1024);
BPF_HASH(kmem_fds, u64, struct pending, 4096);   /* (tgid << 32 | fd) -> the open's event (path) */
BPF_ARRAY(lost, u64, 1);                          /* events dropped by full maps */
BPF_ARRAY(unsent, u64, 1);                        /* events perf_submit() could not write (ring full) */

static __always_inline int filtered(u32 tgid)
{
#ifdef FILTER_TGID
    if (tgid != FILTER_TGID)
        return 1;
#endif
    return 0;
}

static __always_inline void add_one(u64 *n)
{
    if (n)
        __sync_fetch_and_add(n, 1);
}

/* An event a full map made us drop. */
static __always_inline void count_lost(void)
{
    int zero = 0;
    add_one(lost.lookup(&zero));
}

/* Send EV; a full ring is counted in `unsent`. */
static __always_inline void submit(void *ctx, struct kmem_event *ev)
{
    if (events.perf_submit(ctx, ev, sizeof(*ev)) < 0) {
        int zero = 0;
        add_one(unsent.lookup(&zero));
    }
}

/* True when the LEN bytes at the end of the user path UPATH (strlen N) are a file name that starts
 * with "memory.kmem.": the whole path, or what follows its last '/'. */
static __always_inline int kmem_name_at_end(const char *upath, int n, int len)
{
    char b[13] = {};
    int start = n - len;
    if (start < 0)
        return 0;
    if (start == 0)
        bpf_probe_read(b + 1, 12, upath);
    else
        bpf_probe_read(b, 13, upath + start - 1);
    return (start == 0 || b[0] == '/') && b[1] == 'm' && b[2] == 'e' && b[3] == 'm' && b[4] == 'o' &&
           b[5] == 'r' && b[6] == 'y' && b[7] == '.' && b[8] == 'k' && b[9] == 'm' && b[10] == 'e' &&
           b[11] == 'm' && b[12] == '.';
}

/* True when the user path names a cgroup v1 kmem file. Their names (mm/memcontrol.c, 3.10 to 6.x):
 * memory.kmem.failcnt (19 bytes), .slabinfo (20), .tcp.failcnt (23), .limit_in_bytes and
 * .usage_in_bytes (26), .max_usage_in_bytes, .tcp.limit_in_bytes and .tcp.usage_in_bytes (30),
 * .tcp.max_usage_in_bytes (34): the path's end is checked at those lengths only, a fixed amount of
 * work (a byte-by-byte search for the last '/' cost the verifier 267,661 processed instructions,
 * twice the 131,072 that kernels before 5.2 allow). A path cut by the buffer is not matched. */
static __always_inline int is_kmem_path(struct kmem_event *ev, const char *upath)
{
    int n = bpf_probe_read_str(ev->path, sizeof(ev->path), upath);
    if (n <= 1 || n >= (int)sizeof(ev->path))
        return 0;
    n -= 1;
    return kmem_name_at_end(upath, n, 19) || kmem_name_at_end(upath, n, 20) || kmem_name_at_end(upath, n, 23) ||
           kmem_name_at_end(upath, n, 26) || kmem_name_at_end(upath, n, 30) || kmem_name_at_end(upath, n, 34);
}

static __always_inline int on_open_enter(const char *upath, u32 flags)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32, tid = (u32)id;
    int zero = 0;
    if (filtered(tgid))
        return 0;
    struct pending *p = scratch.lookup(&zero);
    if (!p)
        return 0;
    if (!is_kmem_path(&p->ev, upath))
        return 0;
    p->ev.op = KMEM_OP_OPEN;
    p->ev.flags = flags;
    p->ev.tgid = tgid;
    p->ev.tid = tid;
    p->ev.fd = -1;
    p->ev.count = 0;
    p->ev.kernel_hook = 0;
    p->ev.value[0] = 0;
    if (pending_by_tid.update(&tid, p))
        count_lost();
    return 0;
}

#ifdef MEMCG_FROM_CSS
/* DST = PTR->MEMBER of a kernel struct TYPE, read with bpf_probe_read (no implicit dereference). */
#define READ_MEMBER(dst, ptr, type, member) \
    bpf_probe_read(&(dst), sizeof(dst), (const char *)(ptr) + offsetof(type, member))
#if LINUX_VERSION_CODE < KERNEL_VERSION(3, 15, 0)
#define MEMCG_SUBSYS_ID mem_cgroup_subsys_id   /* memory_cgrp_id since 073219e995b4 (v3.15) */
#else
#define MEMCG_SUBSYS_ID memory_cgrp_id
#endif

/* The writer's memory cgroup without bpf_get_current_cgroup_id: current->cgroups (css_set)
 * ->subsys[memory] ->cgroup, recorded as its kernfs id (the directory's inode number; a 4.12-5.4
 * union kernfs_node_id holds the generation in its high half) or, before cgroups moved to kernfs
 * (2bd59d48ebfb, v3.15), the directory name of its struct cgroup_name. */
static __always_inline void read_memcg(struct kmem_event *ev)
{
    struct task_struct *task = (struct task_struct *)bpf_get_current_task();
    struct css_set *cset = NULL;
    struct cgroup_subsys_state *css = NULL;
    struct cgroup *cgrp = NULL;
    READ_MEMBER(cset, task, struct task_struct, cgroups);
    READ_MEMBER(css, cset, struct css_set, subsys[MEMCG_SUBSYS_ID]);
    READ_MEMBER(cgrp, css, struct cgroup_subsys_state, cgroup);
#if LINUX_VERSION_CODE < KERNEL_VERSION(3, 15, 0)
    struct cgroup_name *name = NULL;
    READ_MEMBER(name, cgrp, struct cgroup, name);
    bpf_probe_read_str(ev->memcg_name, sizeof(ev->memcg_name), (const char *)name + offsetof(struct cgroup_name, name));
#else
    struct kernfs_node *kn = NULL;
    READ_MEMBER(kn, cgrp, struct cgroup, kn);
#if LINUX_VERSION_CODE < KERNEL_VERSION(4, 12, 0)
    u32 ino = 0;                     /* unsigned int ino until c53cd490b1a4 (v4.12) */
    READ_MEMBER(ino, kn, struct kernfs_node, ino);
    ev->memcg_id = ino;
#else
    READ_MEMBER(ev->memcg_id, kn, struct kernfs_node, id);
#endif
#endif
}
#endif

static __always_inline void stamp(struct kmem_event *ev)
{
    ev->ts_ns = bpf_ktime_get_ns();
#ifdef HAVE_CGROUP_ID
    ev->cgroup_id = bpftools_get_current_cgroup_id();
#else
    ev->cgroup_id = 0;
#endif
    ev->memcg_id = 0;
    ev->memcg_name[0] = 0;
#ifdef MEMCG_FROM_CSS
    read_memcg(ev);
#endif
    bpf_get_current_comm(&ev->comm, sizeof(ev->comm));
}

/* Syscall exit of an open or write this thread started on a kmem file: emit it with its result. */
static __always_inline int on_exit(void *ctx, long ret)
{
    u32 tid = (u32)bpf_get_current_pid_tgid();
    struct pending *p = pending_by_tid.lookup(&tid);
    if (!p)
        return 0;
    stamp(&p->ev);
    p->ev.ret = ret;
    if (p->ev.op == KMEM_OP_OPEN) {
        p->ev.fd = ret >= 0 ? (s32)ret : -1;
        if (ret >= 0) {
            u64 key = ((u64)p->ev.tgid << 32) | (u32)ret;
            if (kmem_fds.update(&key, p))
                count_lost();
        }
    }
    submit(ctx, &p->ev);
    pending_by_tid.delete(&tid);
    return 0;
}

static __always_inline int on_write_enter(u32 fd, const char *ubuf, u64 count)
{
    u64 id = bpf_get_current_pid_tgid();
    u64 key = (id & 0xffffffff00000000ULL) | fd;
    u32 tid = (u32)id;
    struct pending *open = kmem_fds.lookup(&key);
    if (!open)
        return 0;
    int zero = 0;
    struct pending *p = scratch.lookup(&zero);
    if (!p)
        return 0;
    __builtin_memcpy(p->ev.path, open->ev.path, sizeof(p->ev.path));
    p->ev.op = KMEM_OP_WRITE;
    p->ev.flags = open->ev.flags;
    p->ev.tgid = id >> 32;
    p->ev.tid = tid;
    p->ev.fd = fd;
    p->ev.count = count;
    p->ev.kernel_hook = 0;
    __builtin_memset(p->ev.value, 0, sizeof(p->ev.value));
    bpf_probe_read(p->ev.value, count < KMEM_VALUE_MAX - 1 ? count & (KMEM_VALUE_MAX - 1) : KMEM_VALUE_MAX - 1, ubuf);
    if (pending_by_tid.update(&tid, p))
        count_lost();
    return 0;
}

/* Forget KEY's open kmem file, if it is one: a lookup first, as almost no fd is (a delete takes the
 * bucket's lock, a lookup does not). */
static __always_inline void forget_fd(u64 *key)
{
    if (kmem_fds.lookup(key))
        kmem_fds.delete(key);
}

static __always_inline int on_close(u32 fd)
{
    u64 key = (bpf_get_current_pid_tgid() & 0xffffffff00000000ULL) | fd;
    forget_fd(&key);
    return 0;
}

/* Shells redirect with dup2(): `echo 1 > memory.kmem.limit_in_bytes` writes through fd 1. */
static __always_inline int on_dup(u32 oldfd, u32 newfd)
{
    u64 tg = bpf_get_current_pid_tgid() & 0xffffffff00000000ULL;
    u64 oldkey = tg | oldfd, newkey = tg | newfd;
    struct pending *open = kmem_fds.lookup(&oldkey);
    if (!open) {
        forget_fd(&newkey);   /* newfd now refers to something else */
        return 0;
    }
    if (kmem_fds.update(&newkey, open))
        count_lost();
    return 0;
}

#ifdef SYSCALL_KPROBES
/* The registers holding the syscall's arguments: the probed function's own, or (SYSCALL_WRAPPER,
 * 4.17+ x86-64, fa697140f9a2) the user registers its only argument points to, copied into USER. */
static __always_inline struct pt_regs *syscall_args(struct pt_regs *ctx, struct pt_regs *user)
{
#ifdef SYSCALL_WRAPPER
    bpf_probe_read(user, sizeof(*user), (void *)PT_REGS_PARM1(ctx));
    return user;
#else
    return ctx;
#endif
}

int syscall_openat_entry(struct pt_regs *ctx)
{
    struct pt_regs user = {};
    struct pt_regs *args = syscall_args(ctx, &user);
    return on_open_enter((const char *)PT_REGS_PARM2(args), PT_REGS_PARM3(args));
}

int syscall_open_entry(struct pt_regs *ctx)
{
    struct pt_regs user = {};
    struct pt_regs *args = syscall_args(ctx, &user);
    return on_open_enter((const char *)PT_REGS_PARM1(args), PT_REGS_PARM2(args));
}

int syscall_write_entry(struct pt_regs *ctx)
{
    struct pt_regs user = {};
    struct pt_regs *args = syscall_args(ctx, &user);
    return on_write_enter(PT_REGS_PARM1(args), (const char *)PT_REGS_PARM2(args), PT_REGS_PARM3(args));
}

int syscall_close_entry(struct pt_regs *ctx)
{
    struct pt_regs user = {};
    struct pt_regs *args = syscall_args(ctx, &user);
    return on_close(PT_REGS_PARM1(args));
}

/* dup2 and dup3 (their first two arguments) */
int syscall_dup_entry(struct pt_regs *ctx)
{
    struct pt_regs user = {};
    struct pt_regs *args = syscall_args(ctx, &user);
    return on_dup(PT_REGS_PARM1(args), PT_REGS_PARM2(args));
}

/* kretprobe of openat, open and write */
int syscall_return(struct pt_regs *ctx)
{
    return on_exit(ctx, PT_REGS_RC(ctx));
}
#else
TRACEPOINT_PROBE(syscalls, sys_enter_openat)
{
    return on_open_enter(args->filename, args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_openat)
{
    return on_exit(args, args->ret);
}

#ifdef HAVE_SYS_OPEN
TRACEPOINT_PROBE(syscalls, sys_enter_open)
{
    return on_open_enter(args->filename, args->flags);
}

TRACEPOINT_PROBE(syscalls, sys_exit_open)
{
    return on_exit(args, args->ret);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_write)
{
    return on_write_enter(args->fd, args->buf, args->count);
}

TRACEPOINT_PROBE(syscalls, sys_exit_write)
{
    return on_exit(args, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_enter_close)
{
    return on_close(args->fd);
}

#ifdef HAVE_SYS_DUP2
TRACEPOINT_PROBE(syscalls, sys_enter_dup2)
{
    return on_dup(args->oldfd, args->newfd);
}
#endif

TRACEPOINT_PROBE(syscalls, sys_enter_dup3)
{
    return on_dup(args->oldfd, args->newfd);
}
#endif

#ifdef KERNEL_HOOK
struct kernel_call {
    u64 arg;
    char value[KMEM_VALUE_MAX];
    char name[64];    /* HOOK_CGROUP_WRITE: the file's kernfs name */
};
BPF_HASH(kernel_calls, u32, struct kernel_call, 1024);

/* kprobe on the kmem limit handler: remember its argument (HOOK_CGROUP_WRITE: only for memory.kmem.* files). */
int kernel_write_entry(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    struct kernel_call call = {};
    if (filtered(id >> 32))
        return 0;
#if KERNEL_HOOK == HOOK_CGROUP_WRITE
    void *kn = NULL;
    const char *name = NULL;
    char base[12] = {};
    bpf_probe_read(&kn, sizeof(kn), (void *)PT_REGS_PARM1(ctx) + OFF_OF_KN);
    bpf_probe_read(&name, sizeof(name), kn + OFF_KN_NAME);
    bpf_probe_read(base, sizeof(base), name);
    if (!(base[0] == 'm' && base[1] == 'e' && base[2] == 'm' && base[3] == 'o' && base[4] == 'r' &&
          base[5] == 'y' && base[6] == '.' && base[7] == 'k' && base[8] == 'm' && base[9] == 'e' &&
          base[10] == 'm' && base[11] == '.'))
        return 0;
    bpf_probe_read_str(call.name, sizeof(call.name), name);
    bpf_probe_read_str(call.value, sizeof(call.value), (void *)PT_REGS_PARM2(ctx));
#else
    call.arg = PT_REGS_PARM2(ctx);
#endif
    if (kernel_calls.update(&tid, &call))
        count_lost();
    return 0;
}

/* kretprobe: annotate the write(2) in flight, or report the call alone (pwrite, writev, io_uring...). */
int kernel_write_return(struct pt_regs *ctx)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = (u32)id;
    int zero = 0;
    struct kernel_call *call = kernel_calls.lookup(&tid);
    if (!call)
        return 0;
    long ret = PT_REGS_RC(ctx);
    struct pending *p = pending_by_tid.lookup(&tid);
    if (p && p->ev.op == KMEM_OP_WRITE) {
        p->ev.kernel_hook = KERNEL_HOOK;
        p->ev.kernel_arg = call->arg;
        p->ev.kernel_ret = ret;
        kernel_calls.delete(&tid);
        return 0;
    }
    p = scratch.lookup(&zero);
    if (!p) {
        kernel_calls.delete(&tid);
        return 0;
    }
    __builtin_memset(&p->ev, 0, sizeof(p->ev));
    __builtin_memcpy(p->ev.value, call->value, sizeof(p->ev.value));
    __builtin_memcpy(p->ev.path, call->name, sizeof(call->name));
    p->ev.op = KMEM_OP_KERNEL;
    p->ev.tgid = id >> 32;
    p->ev.tid = tid;
    p->ev.fd = -1;
    p->ev.kernel_hook = KERNEL_HOOK;
    p->ev.kernel_arg = call->arg;
    p->ev.kernel_ret = ret;
    p->ev.ret = ret;
    stamp(&p->ev);
    submit(ctx, &p->ev);
    kernel_calls.delete(&tid);
    return 0;
}
#endif
