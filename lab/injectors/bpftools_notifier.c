// SPDX-License-Identifier: GPL-2.0
/*
 * bpftools_notifier: a netdevice notifier of its own, for tests (known ground truth).
 *
 * It registers one notifier block, bpftools_notifier_event, on netdev_chain with the priority given
 * (module parameter "priority"; the chain runs higher priorities first). Its callback counts the
 * NETDEV_UNREGISTER calls it gets for devices waiting in unregistration (NETREG_UNREGISTERED: the
 * rebroadcasts of the kernel's wait loop) and returns NOTIFY_OK for them (NOTIFY_DONE otherwise).
 *
 * Commands written to /proc/bpftools_notifier (device names are looked up in the writer's netns):
 *   hold IFNAME K   take one reference on IFNAME (bpftools_notifier_take -> dev_hold); the callback
 *                   drops it (bpftools_notifier_drop -> dev_put) in its K-th call for that device
 *                   while it waits: a slow release by a subscriber. K 0: never (unloading drops it).
 * Reading it prints "priority P", "calls IFNAME N" per device called for (at most 8), "dropped IFNAME K"
 * once dropped, then the notifier blocks from its own to the end of netdev_chain, read under
 * rtnl_lock: "chain SYMBOL+OFF/SIZE [MODULE] PRIORITY" (%pS), its own first.
 */
#include <linux/module.h>
#include <linux/netdevice.h>
#include <linux/notifier.h>
#include <linux/nsproxy.h>
#include <linux/proc_fs.h>
#include <linux/rtnetlink.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>
#include <net/net_namespace.h>

#define MAX_SEEN 8

static int priority;
module_param(priority, int, 0444);
MODULE_PARM_DESC(priority, "priority of the notifier block on netdev_chain");

/* All under rtnl_lock: the wait loop's rebroadcasts hold it, and so do the commands and reads. */
static struct net_device *held;
static unsigned long drop_after, held_calls;
static char seen_name[MAX_SEEN][IFNAMSIZ];
static unsigned long seen_calls[MAX_SEEN];
static char dropped_name[IFNAMSIZ];
static unsigned long dropped_in;

/* noipa: no .isra/.constprop clones, so these names are the ones in kallsyms and stacks. */
static noinline __attribute__((noipa)) void bpftools_notifier_take(struct net_device *dev)
{
	dev_hold(dev);
	barrier();
}

static noinline __attribute__((noipa)) void bpftools_notifier_drop(struct net_device *dev)
{
	dev_put(dev);
	barrier();
}

static void count_call(const char *name)
{
	int i;

	for (i = 0; i < MAX_SEEN && seen_name[i][0]; i++)
		if (!strcmp(seen_name[i], name))
			break;
	if (i == MAX_SEEN)
		return;
	if (!seen_name[i][0])
		strscpy(seen_name[i], name, IFNAMSIZ);
	seen_calls[i]++;
}

static noinline __attribute__((noipa)) int bpftools_notifier_event(struct notifier_block *nb,
								   unsigned long event, void *ptr)
{
	struct net_device *dev = netdev_notifier_info_to_dev(ptr);

	if (event != NETDEV_UNREGISTER || dev->reg_state != NETREG_UNREGISTERED)
		return NOTIFY_DONE;
	count_call(dev->name);
	if (dev == held && ++held_calls == drop_after) {
		strscpy(dropped_name, dev->name, IFNAMSIZ);
		dropped_in = held_calls;
		held = NULL;
		bpftools_notifier_drop(dev);
	}
	return NOTIFY_OK;
}

static struct notifier_block bpftools_nb = {
	.notifier_call = bpftools_notifier_event,
};

static int do_hold(const char *name, unsigned long k)
{
	struct net_device *dev;

	if (held)
		return -EBUSY;
	dev = __dev_get_by_name(current->nsproxy->net_ns, name);
	if (!dev)
		return -ENODEV;
	bpftools_notifier_take(dev);
	held = dev;
	held_calls = 0;
	drop_after = k;
	return 0;
}

static ssize_t notifier_write(struct file *file, const char __user *buf, size_t len, loff_t *off)
{
	char cmd[32] = {}, name[IFNAMSIZ] = {};
	unsigned long k;
	int ret;

	if (copy_from_user(cmd, buf, min(len, sizeof(cmd) - 1)))
		return -EFAULT;
	if (sscanf(cmd, "hold %15s %lu", name, &k) != 2)
		return -EINVAL;
	rtnl_lock();
	ret = do_hold(name, k);
	rtnl_unlock();
	return ret ? ret : len;
}

static int notifier_show(struct seq_file *m, void *v)
{
	struct notifier_block *nb;
	int i;

	rtnl_lock();
	seq_printf(m, "priority %d\n", priority);
	for (i = 0; i < MAX_SEEN && seen_name[i][0]; i++)
		seq_printf(m, "calls %s %lu\n", seen_name[i], seen_calls[i]);
	if (dropped_in)
		seq_printf(m, "dropped %s %lu\n", dropped_name, dropped_in);
	for (nb = &bpftools_nb; nb; nb = rtnl_dereference(nb->next))
		seq_printf(m, "chain %pS %d\n", nb->notifier_call, nb->priority);
	rtnl_unlock();
	return 0;
}

static int notifier_open(struct inode *inode, struct file *file)
{
	return single_open(file, notifier_show, NULL);
}

static const struct proc_ops notifier_ops = {
	.proc_open = notifier_open,
	.proc_read = seq_read,
	.proc_lseek = seq_lseek,
	.proc_release = single_release,
	.proc_write = notifier_write,
};

static int __init notifier_init(void)
{
	int err;

	bpftools_nb.priority = priority;
	err = register_netdevice_notifier(&bpftools_nb);
	if (err)
		return err;
	if (!proc_create("bpftools_notifier", 0600, NULL, &notifier_ops)) {
		unregister_netdevice_notifier(&bpftools_nb);
		return -ENOMEM;
	}
	return 0;
}

static void __exit notifier_exit(void)
{
	remove_proc_entry("bpftools_notifier", NULL);
	unregister_netdevice_notifier(&bpftools_nb);
	rtnl_lock();
	if (held)
		bpftools_notifier_drop(held);
	held = NULL;
	rtnl_unlock();
}

module_init(notifier_init);
module_exit(notifier_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("bpftools lab: a marked netdevice notifier that can drop a device reference after K rounds");
