/* writeslow: constants of the writeback section of iojitter.bpf.c (Python mirrors them in tools/writeslow.py). */
#ifndef BPFTOOLS_WRITESLOW_H
#define BPFTOOLS_WRITESLOW_H

/* iostall_event.func of EV_WRITEBACK in tracepoint mode; kprobe mode uses the slot 0..WB_SLOTS-1 */
#define WB_SRC_SINGLE_INODE 100   /* writeback:writeback_single_inode_start .. writeback_single_inode */
#define WB_SRC_EXT4 101           /* ext4:ext4_writepages .. ext4:ext4_writepages_result */
#define WB_SLOTS 8                /* kprobe mode: at most this many functions */

/* iostall_event.flags of EV_WRITEBACK */
#define WB_F_INODE 1          /* ino (and dev or bdi name) are known */
#define WB_F_WRITTEN 2        /* written is known */
#define WB_F_DEEPER 4         /* nesting went deeper than WB_MAX_DEPTH: inner calls not recorded */
#define WB_F_EXIT_STACK 8     /* kstack was taken at the call's end (WB_STACK_AT_EXIT) */

/* kinds of first argument in kprobe mode (WB_ARGn) */
#define WB_ARG_NONE 0
#define WB_ARG_MAPPING 1      /* (struct address_space *mapping, struct writeback_control *wbc, ...) */
#define WB_ARG_PAGE 2         /* (struct page *page, struct writeback_control *wbc, ...) */

/* wb_stack.marks */
#define WB_S_MP_CALL 1        /* mp holds a mempool_alloc call made inside this writeback (ONLY_IN_WB) */

#define WB_MAX_DEPTH 8        /* a power of two: the index is masked with WB_MAX_DEPTH - 1 */
#define BDI_NAME_LEN 32       /* a writeback frame's bdi name (the writeback tracepoints' name[32]) */

struct wb_frame {
    u64 start_ns;
    u64 ino;
    u64 wbc;              /* kprobe mode: the writeback_control, read again at return */
    u64 mapping;          /* kprobe mode: the address_space, whose inode a slow call reports */
    u64 arg;
    u64 cgroup_ino;
    s64 nr_to_write;
    u32 func;
    u32 dev;
    s32 kstack;
    u32 flags;
    char name[BDI_NAME_LEN];
};

/* the writeback calls a thread is inside, outermost first */
struct wb_stack {
    u32 depth;            /* may exceed WB_MAX_DEPTH: frames past it are counted, not stored */
    u32 marks;            /* WB_S_* */
    struct wb_frame f[WB_MAX_DEPTH];
#ifdef ONLY_IN_WB
    struct mp_call mp;    /* the thread's mempool_alloc call inside the writeback (mempoolwait.h) */
#endif
};

#endif
