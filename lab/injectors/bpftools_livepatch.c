// SPDX-License-Identifier: GPL-2.0
/*
 * bpftools_livepatch: a real live patch for the lab, so that `bpftools doctor` can be checked
 * against what the kernel reports of it (/sys/kernel/livepatch, the K taint).
 *
 * It replaces cmdline_proc_show (fs/proc/cmdline.c, the function the kernel's own
 * samples/livepatch/livepatch-sample.c replaces) with an equivalent: /proc/cmdline is read once at
 * load, before the patch is enabled, and the new function prints that same text. The command line
 * does not change while the kernel runs, so readers see no difference.
 *
 * Removal: echo 0 > /sys/kernel/livepatch/bpftools_livepatch/enabled, wait until the directory is
 * gone (the transition back is complete), then rmmod. Needs CONFIG_LIVEPATCH and 5.1+
 * (klp_enable_patch from the module's init).
 */
#include <linux/err.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static char cmdline[4096];

static int bpftools_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, cmdline);
	return 0;
}

static struct klp_func funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = bpftools_cmdline_proc_show, },
	{ }
};

static struct klp_object objs[] = {
	{ .funcs = funcs, },	/* name NULL: vmlinux */
	{ }
};

static struct klp_patch patch = {
	.mod = THIS_MODULE,
	.objs = objs,
};

static int __init bpftools_livepatch_init(void)
{
	struct file *f = filp_open("/proc/cmdline", O_RDONLY, 0);
	loff_t pos = 0;
	ssize_t n;

	if (IS_ERR(f))
		return PTR_ERR(f);
	n = kernel_read(f, cmdline, sizeof(cmdline) - 1, &pos);
	filp_close(f, NULL);
	if (n < 0)
		return n;
	cmdline[n] = '\0';
	return klp_enable_patch(&patch);
}

static void __exit bpftools_livepatch_exit(void)
{
}

module_init(bpftools_livepatch_init);
module_exit(bpftools_livepatch_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("bpftools lab: an equivalent live patch of cmdline_proc_show");
MODULE_INFO(livepatch, "Y");
