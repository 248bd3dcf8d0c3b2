// SPDX-License-Identifier: GPL-2.0
/*
 * bpftools_devref: a network device reference leak on demand, for tests (known ground truth).
 *
 * Commands written to /proc/bpftools_devref (device names are looked up in the writer's netns):
 *   hold IFNAME    take one reference (bpftools_devref_take -> dev_hold) and keep it
 *   put [IFNAME]   drop the kept references (all, or those on IFNAME) (bpftools_devref_drop)
 *   clean IFNAME   take one reference and drop it at once (the correct pattern)
 * Reading it prints "holds N", "puts N", then one "held IFNAME USAGE" line per kept reference,
 * USAGE being netdev_refcnt_read() now: what "Usage count = N" will print. Unloading drops
 * anything still kept.
 */
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/nsproxy.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/mutex.h>
#include <linux/uaccess.h>
#include <net/net_namespace.h>

#define MAX_HELD 8

static struct net_device *held[MAX_HELD];
static DEFINE_MUTEX(held_lock);
static unsigned long holds, puts;

/* noipa: no .isra/.constprop clones, so these names are the ones in kallsyms and stacks. */
static noinline __attribute__((noipa)) void bpftools_devref_take(struct net_device *dev)
{
	dev_hold(dev);
	barrier();
}

static noinline __attribute__((noipa)) void bpftools_devref_drop(struct net_device *dev)
{
	dev_put(dev);
	barrier();
}

/* One reference on NAME in the writer's netns, or NULL. Caller holds held_lock. */
static struct net_device *take_by_name(const char *name)
{
	struct net_device *dev;

	rcu_read_lock();
	dev = dev_get_by_name_rcu(current->nsproxy->net_ns, name);
	if (dev) {
		bpftools_devref_take(dev);
		holds++;
	}
	rcu_read_unlock();
	return dev;
}

static void drop(struct net_device *dev)
{
	bpftools_devref_drop(dev);
	puts++;
}

static int do_hold(const char *name)
{
	int i;

	for (i = 0; i < MAX_HELD && held[i]; i++)
		;
	if (i == MAX_HELD)
		return -ENOSPC;
	held[i] = take_by_name(name);
	return held[i] ? 0 : -ENODEV;
}

static int do_put(const char *name)
{
	int i, dropped = 0;

	for (i = 0; i < MAX_HELD; i++) {
		if (held[i] && (!*name || !strcmp(held[i]->name, name))) {
			drop(held[i]);
			held[i] = NULL;
			dropped++;
		}
	}
	return dropped ? 0 : -ENOENT;
}

static int do_clean(const char *name)
{
	struct net_device *dev = take_by_name(name);

	if (!dev)
		return -ENODEV;
	drop(dev);
	return 0;
}

static ssize_t devref_write(struct file *file, const char __user *buf, size_t len, loff_t *off)
{
	char cmd[8 + IFNAMSIZ] = {};
	char *name;
	int ret;

	if (copy_from_user(cmd, buf, min(len, sizeof(cmd) - 1)))
		return -EFAULT;
	strim(cmd);
	name = strchr(cmd, ' ');
	if (name)
		*name++ = '\0';
	else
		name = cmd + strlen(cmd);
	name = strim(name);
	if (strlen(name) >= IFNAMSIZ)
		return -EINVAL;
	mutex_lock(&held_lock);
	if (!strcmp(cmd, "hold") && *name)
		ret = do_hold(name);
	else if (!strcmp(cmd, "put"))
		ret = do_put(name);
	else if (!strcmp(cmd, "clean") && *name)
		ret = do_clean(name);
	else
		ret = -EINVAL;
	mutex_unlock(&held_lock);
	return ret ? ret : len;
}

static int devref_show(struct seq_file *m, void *v)
{
	int i;

	mutex_lock(&held_lock);
	seq_printf(m, "holds %lu\nputs %lu\n", holds, puts);
	for (i = 0; i < MAX_HELD; i++)
		if (held[i])
			seq_printf(m, "held %s %d\n", held[i]->name, netdev_refcnt_read(held[i]));
	mutex_unlock(&held_lock);
	return 0;
}

static int devref_open(struct inode *inode, struct file *file)
{
	return single_open(file, devref_show, NULL);
}

static const struct proc_ops devref_ops = {
	.proc_open = devref_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = devref_write,
};

static int __init devref_init(void)
{
	return proc_create("bpftools_devref", 0600, NULL, &devref_ops) ? 0 : -ENOMEM;
}

static void __exit devref_exit(void)
{
	remove_proc_entry("bpftools_devref", NULL);
	mutex_lock(&held_lock);
	do_put("");
	mutex_unlock(&held_lock);
}

module_init(devref_init);
module_exit(devref_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("bpftools lab: leak a network device reference on demand");
