/*
 * BPF helpers newer than the oldest bcc bpftools supports (0.9.0), called by their number in the
 * kernel's enum bpf_func_id (include/uapi/linux/bpf.h) rather than by bcc's helpers.h declaration:
 * bcc before 0.14.0 does not declare bpf_jiffies64 (kernel 5.5+), so a new kernel with an old bcc
 * would not compile. Each is used only where the plan found the helper in this kernel (HAVE_*).
 */
#ifndef BPFTOOLS_HELPERS_BY_NUMBER_H
#define BPFTOOLS_HELPERS_BY_NUMBER_H

#define BPFTOOLS_FUNC_get_current_cgroup_id 80   /* 4.18, commit bf6fa2c893c5 */
#define BPFTOOLS_FUNC_jiffies64 118              /* 5.5, commit 5576b991e9c1 */

#ifdef HAVE_CGROUP_ID
static u64 (*bpftools_get_current_cgroup_id)(void) = (void *)BPFTOOLS_FUNC_get_current_cgroup_id;
#endif
#ifdef HAVE_JIFFIES64
static u64 (*bpftools_jiffies64)(void) = (void *)BPFTOOLS_FUNC_jiffies64;
#endif

#endif
